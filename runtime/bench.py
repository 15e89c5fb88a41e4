"""`edgesd bench`: how fast and how big a model folder is on this device, with the runtime alone.

Cold start (load + compile, then the first run) is measured once; then `warmup` untimed and
`repeat` timed runs give per-stage medians and spreads. Peak memory is the process's max RSS.
"""

import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgesd.pipelines import Img2ImgPipeline

STAGES = ("text", "encode", "step", "decode", "total")


def bench_image(resolution: int) -> Image.Image:
    """A deterministic, non-flat test picture (content does not change the cost)."""
    y, x = np.mgrid[0:resolution, 0:resolution]
    rgb = np.stack([x * 255 // resolution, y * 255 // resolution, (x ^ y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def _peak_rss_mib() -> float:
    """This process's peak resident memory. On Linux VmHWM: ru_maxrss survives exec, so a process
    started by a bigger one (a benchmark driver, a test runner) would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_benchmark(model: str | Path, backend="auto", device="auto", precision="auto", resolution=None,
                  steps=None, strength=None, guidance=None, repeat=3, warmup=1, threads=None,
                  low_memory=False, loras=(), vae=None) -> dict:
    t0 = time.perf_counter()
    pipe = Img2ImgPipeline.load(model, backend=backend, device=device, inference_precision=precision, threads=threads,
                                low_memory=low_memory, loras=loras, vae=vae)
    pipe.reuse_encodings = False  # every run pays for its own text and image encoding
    resolution = resolution or pipe.folder.native_size  # the size the model is made for
    image = bench_image(resolution)
    load = time.perf_counter() - t0
    kwargs = dict(strength=strength, num_inference_steps=steps, guidance_scale=guidance, seed=0)
    first = pipe(image, "a benchmark prompt", **kwargs)
    for _ in range(warmup):
        pipe(image, "a benchmark prompt", **kwargs)
    stages = {stage: [] for stage in STAGES}
    for _ in range(repeat):
        timings = pipe(image, "a benchmark prompt", **kwargs).timings
        for stage in ("text", "encode", "decode", "total"):
            stages[stage].append(timings[stage])
        stages["step"].extend(timings["steps"])
    folder_bytes = sum(f.stat().st_size for f in pipe.folder.path.rglob("*") if f.is_file())
    return {
        "model": pipe.provenance["model"],  # its name or hub repo: results are shared, local paths are not
        "backend": pipe.backend,
        "device": device,
        "low_memory": low_memory,
        "loras": pipe.provenance.get("loras", []),
        "vae": pipe.provenance.get("vae"),
        "precision": precision,
        "resolution": resolution,
        "settings": {k: first.settings[k] for k in ("num_inference_steps", "strength", "guidance_scale")},
        "unet_steps": len(first.timings["steps"]),
        "cold_start": {"load": load, "first_run": first.timings["total"]},
        "warm": {stage: _summary(values) for stage, values in stages.items() if values},
        "peak_rss_mib": _peak_rss_mib(),
        "model_folder_mib": folder_bytes / 2**20,
    }
