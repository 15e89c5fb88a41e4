"""LoRA at load time: load time and peak memory with and without a LoRA, per engine.

    python bench/lora.py make DIFFUSERS_FOLDER OUT.safetensors [--rank 64]   # torch + peft: a random LoRA
    python bench/lora.py run MODEL LORA --out bench/results/lora-sd15.json     # torch-free measurement

`make` draws a LoRA as people train them for SD 1.5 (kohya's default targets: every linear layer of
the UNet's transformer blocks, their 1x1 proj_in/proj_out, the text encoder's attention and MLP) at
the given rank, saved in diffusers' format. `run` loads MODEL in a fresh process per case (no LoRA,
the LoRA) and engine, rounds alternating, and records the load time, the peak resident memory
(VmHWM) after loading and after one call, and the call's time: what the merge costs.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from compare import alternate, bench_image, bench_mask, environment, peak_rss_mib

SCHEMA = "edgesd-bench-lora/1"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def make(diffusers_folder: Path, out: Path, rank: int) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    layers = {}
    for name, cls, targets in (("unet", UNet2DConditionModel, UNET_TARGETS), ("text_encoder", CLIPTextModel, TEXT_TARGETS)):
        model = cls.from_pretrained(diffusers_folder, subfolder=name)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False))
        layers[name] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        del model
    StableDiffusionPipeline.save_lora_weights(out.parent, unet_lora_layers=layers["unet"],
                                              text_encoder_lora_layers=layers["text_encoder"], weight_name=out.name)
    print(f"{out}: {out.stat().st_size / 2**20:.0f} MiB, {sum(len(v) for v in layers.values()) // 2} layers of rank {rank}")


def one(model: Path, backend: str, lora: str | None, resolution: int, steps: int) -> dict:
    """One case in this process: load, then one call."""
    from edgesd import Img2ImgPipeline, InpaintPipeline
    from edgesd.model_folder import open_model_folder

    inpainting = open_model_folder(model).unet_config.get("in_channels", 4) == 9
    t0 = time.perf_counter()
    pipe = (InpaintPipeline if inpainting else Img2ImgPipeline).load(
        model, backend=backend, device="cpu", loras=[lora] if lora else ())
    load = time.perf_counter() - t0
    peak_load = peak_rss_mib()
    image = bench_image(resolution)
    call = dict(num_inference_steps=steps, strength=1.0, guidance_scale=7.5, seed=0, size=(resolution, resolution))
    t0 = time.perf_counter()
    pipe(image, bench_mask(resolution), "a benchmark prompt", **call) if inpainting else pipe(image, "a benchmark prompt", **call)
    return {"load_s": load, "call_s": time.perf_counter() - t0, "peak_after_load_mib": peak_load,
            "peak_mib": peak_rss_mib()}


def run(model: Path, lora: Path, rounds: int, resolution: int, steps: int, backends: list[str]) -> dict:
    cases = {}
    for backend in backends:
        for case, file in (("no LoRA", None), ("LoRA", lora)):
            cases[f"{backend}|{case}"] = [sys.executable, __file__, "one", str(model), "--backend", backend, "--resolution",
                                          str(resolution), "--steps", str(steps), *(["--lora", str(file)] if file else [])]
    results = {}
    for key, runs in alternate(cases, rounds).items():
        backend, case = key.split("|")
        results.setdefault(backend, {})[case] = runs
    summary = {backend: {case: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for case, runs in cases.items()}
               for backend, cases in results.items()}
    for backend, cases in summary.items():
        cases["ratios"] = {key: cases["LoRA"][key] / cases["no LoRA"][key] for key in cases["LoRA"]}
    return {"schema": SCHEMA, "model": str(model), "lora": {"file": lora.name, "mib": lora.stat().st_size / 2**20},
            "command": " ".join(["python bench/lora.py run", str(model), str(lora), f"--rounds {rounds}",
                                 f"--resolution {resolution}", f"--steps {steps}"]),
            "resolution": resolution, "steps": steps, "rounds": rounds, "summary": summary, "runs": results,
            **environment()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("make")
    p.add_argument("diffusers_folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--rank", type=int, default=64)
    for name in ("run", "one"):
        p = commands.add_parser(name)
        p.add_argument("model", type=Path)
        p.add_argument("--resolution", type=int, default=256)
        p.add_argument("--steps", type=int, default=2)
        if name == "run":
            p.add_argument("lora", type=Path)
            p.add_argument("--rounds", type=int, default=2)
            p.add_argument("--backends", default="onnxruntime,openvino")
            p.add_argument("--out", type=Path)
        else:
            p.add_argument("--backend", required=True)
            p.add_argument("--lora")
    args = parser.parse_args()
    if args.command == "make":
        make(args.diffusers_folder, args.out, args.rank)
    elif args.command == "one":
        print(json.dumps(one(args.model, args.backend, args.lora, args.resolution, args.steps)))
    else:
        result = run(args.model, args.lora, args.rounds, args.resolution, args.steps, args.backends.split(","))
        print(json.dumps(result["summary"], indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
