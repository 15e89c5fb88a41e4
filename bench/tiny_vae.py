"""What a tiny VAE costs in image quality: the same latents, made by the model's own pipeline, decoded
by the model's VAE and by the tiny one; PSNR/SSIM between the two images (edgesd.export.fidelity).

    python bench/tiny_vae.py MODEL TINY_VAE_FOLDER --resolution 512 --steps 2 --out bench/results/tiny-vae-quality.json

With random weights (the bench models) the figures only show the method works; with real weights
(stabilityai/sd-turbo and madebyollin/taesd) they are the cost users pay for the speed.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from compare import bench_image, environment
from edgesd import Img2ImgPipeline
from edgesd.export.fidelity import psnr, ssim
from edgesd.image import postprocess

SCHEMA = "edgesd-bench-tiny-vae-quality/1"


def measure(model: Path, vae: Path, resolution: int, steps: int, seeds: int) -> dict:
    full = Img2ImgPipeline.load(model, backend="openvino", device="cpu")
    tiny = Img2ImgPipeline.load(model, backend="openvino", device="cpu", vae=vae, vae_decode_only=True)
    rows = []
    for seed in range(seeds):
        latents = []
        full(bench_image(resolution), "a watercolor painting of hills at sunset", num_inference_steps=steps, seed=seed,
             callback=lambda step, total, x: latents.append(x.copy()))
        timings, images = {}, {}
        for name, pipe in (("full", full), ("tiny", tiny)):
            t0 = time.perf_counter()
            images[name] = np.asarray(postprocess(pipe.vae.decode(latents[-1]))[0], np.float64)
            timings[name] = time.perf_counter() - t0
        rows.append({"seed": seed, "psnr": psnr(images["full"], images["tiny"]), "ssim": ssim(images["full"], images["tiny"]),
                     "decode_s": timings})
    return {"schema": SCHEMA, "model": str(model), "vae": str(vae), "resolution": resolution, "steps": steps,
            "psnr_mean": statistics.mean(r["psnr"] for r in rows), "ssim_mean": statistics.mean(r["ssim"] for r in rows),
            "rows": rows, **environment()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("vae", type=Path)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.model, args.vae, args.resolution, args.steps, args.seeds)
    print(json.dumps({k: result[k] for k in ("psnr_mean", "ssim_mean")} | {"rows": result["rows"]}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
