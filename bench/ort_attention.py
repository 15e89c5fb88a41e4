"""onnxruntime's memory (issue 15): a model folder whose ONNX UNet has its attention as torch.onnx
wrote it (edgesd <= 0.2, optimum) against the same weights with it fused (edgesd export now).

    python bench/ort_attention.py make MODEL OUT          # OUT: MODEL with its ONNX UNet fused
    python bench/ort_attention.py run MODEL OUT --resolution 512 --steps 4 --out results/ort-attention-sd15-512.json

`make` links MODEL's files into OUT except the UNet's ONNX graph (and its weights, which onnx's
checks refuse through a link), fuses it with the export's own step and records it in edgesd.json.
`run` makes one call in a fresh process per folder, rounds alternating, at guidance 7.5 (UNet
batch 2): the peak resident memory (VmHWM), every UNet call's time, and the images, whose
difference shows the fused graph computes what the unfused one does.
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from compare import alternate, bench_image, bench_mask, environment, peak_rss_mib

SCHEMA = "edgesd-bench-ort-attention/1"


def make(model: Path, out: Path) -> None:
    from edgesd.export.fuse_attention import fuse_unet_attention
    from edgesd.model_folder import MANIFEST, sha256

    out.mkdir(parents=True)
    for item in model.iterdir():
        if item.name not in ("unet", MANIFEST):
            (out / item.name).symlink_to(item.resolve())
    (out / "unet").mkdir()
    for item in (model / "unet").iterdir():
        if item.name.startswith("model.onnx"):
            shutil.copy(item, out / "unet" / item.name)
        else:
            (out / "unet" / item.name).symlink_to(item.resolve())
    print(f"fused {fuse_unet_attention(out / 'unet' / 'model.onnx')} attention blocks")
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["onnx_attention_fused"] = True
    for name, record in manifest["submodels"]["unet"]["formats"]["onnx"]["files"].items():
        record.update(bytes=(out / "unet" / name).stat().st_size, sha256=sha256(out / "unet" / name))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def one(model: Path, resolution: int, steps: int, image_out: Path) -> dict:
    """One call in this process on onnxruntime: peak memory, UNet call times; the image saved."""
    from edgesd import Img2ImgPipeline, InpaintPipeline
    from edgesd.model_folder import open_model_folder

    inpainting = open_model_folder(model).unet_config.get("in_channels", 4) == 9
    pipe = (InpaintPipeline if inpainting else Img2ImgPipeline).load(model, backend="onnxruntime", device="cpu")
    unet_calls = []

    class Timed:
        def __init__(self, session):
            self.session, self.input_types = session, session.input_types

        def run(self, feeds):
            t0 = time.perf_counter()
            outputs = self.session.run(feeds)
            unet_calls.append(time.perf_counter() - t0)
            return outputs

    pipe.wrap_sessions(lambda name, session: Timed(session) if name == "unet" else session)
    image = bench_image(resolution)
    call = dict(num_inference_steps=steps, strength=1.0, guidance_scale=7.5, seed=0, size=(resolution, resolution))
    t0 = time.perf_counter()
    result = pipe(image, bench_mask(resolution), "a benchmark prompt", **call) if inpainting else pipe(image, "a benchmark prompt", **call)
    elapsed = time.perf_counter() - t0
    np.save(image_out, np.asarray(result.images[0]))
    return {"call_s": elapsed, "unet_call_s": statistics.median(unet_calls), "first_unet_call_s": unet_calls[0],
            "peak_mib": peak_rss_mib()}


def run(before: Path, after: Path, rounds: int, resolution: int, steps: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cases = {case: [sys.executable, __file__, "one", str(folder), "--resolution", str(resolution), "--steps", str(steps),
                    "--image-out", str(work / f"{case}.npy")]
             for case, folder in (("unfused", before), ("fused", after))}
    runs = alternate(cases, rounds)
    summary = {case: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for case, rows in runs.items()}
    summary["ratios"] = {key: summary["fused"][key] / summary["unfused"][key] for key in summary["fused"]}
    difference = np.abs(np.load(work / "fused.npy").astype(int) - np.load(work / "unfused.npy").astype(int))
    summary["images"] = {"max_abs_levels": int(difference.max()), "within_1_level": float((difference <= 1).mean())}
    return {"schema": SCHEMA, "before": str(before), "after": str(after),
            "command": f"python bench/ort_attention.py run {before} {after} --rounds {rounds} --resolution {resolution} --steps {steps}",
            "resolution": resolution, "steps": steps, "rounds": rounds, "summary": summary, "runs": runs,
            **environment()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("make")
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    for name in ("run", "one"):
        p = commands.add_parser(name)
        p.add_argument("model", type=Path)
        p.add_argument("--resolution", type=int, default=512)
        p.add_argument("--steps", type=int, default=4)
        if name == "run":
            p.add_argument("fused", type=Path)
            p.add_argument("--rounds", type=int, default=2)
            p.add_argument("--work-dir", type=Path, default=Path("ort-attention-work"))
            p.add_argument("--out", type=Path)
        else:
            p.add_argument("--image-out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "make":
        make(args.model, args.out)
    elif args.command == "one":
        print(json.dumps(one(args.model, args.resolution, args.steps, args.image_out)))
    else:
        result = run(args.model, args.fused, args.rounds, args.resolution, args.steps, args.work_dir)
        print(json.dumps(result["summary"], indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
