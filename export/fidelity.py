"""How far a quantized model folder is from its fp32 one, measured through the public API.

For a fixed set of img2img cases (procedural images and prompts that calibration does not use,
fixed seeds), both folders run on the same backend in exact fp32 compute, and:

- output images: PSNR (dB, 8-bit) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
  K1 0.01, K2 0.03, per RGB channel and averaged; as skimage's structural_similarity with
  gaussian_weights=True, use_sample_covariance=False, data_range=255);
- the UNet alone: every input the fp32 pipeline fed its UNet is fed to the quantized UNet too, and
  the noise predictions compared by cosine similarity (so the UNet's error is not mixed with the
  trajectory drift that the whole-image numbers include).

Numbers from random-weight test models are indicative only (random weights have neither the
activation outliers nor the smoothness of trained ones); the code is the same for real models.
Torch-free: runs wherever the runtime does. `python -m edgesd.export.fidelity QUANTIZED FP32`.
"""

import argparse
import gc
import json
from pathlib import Path

import numpy as np

from edgesd.export.calibration import RecordingSession, builtin_images
from edgesd.sessions.base import output

CASES = (  # (prompt, seed); the images are builtin_images(seed=1), not calibration's seed=0
    ("a lighthouse on a rocky coast, golden hour photograph", 1234),
    ("a cozy reading room with bookshelves, interior design render", 99),
    ("a hummingbird near a red flower, macro photography", 7),
)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, sigma: float = 1.5, radius: int = 5) -> float:
    """Mean SSIM of two HxW or HxWxC images (channels averaged), Gaussian-weighted as Wang et al. 2004."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], data_range, sigma, radius) for c in range(a.shape[2])]))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()

    def blur(x):  # separable, 'valid': only pixels whose whole window is inside the image
        x = np.apply_along_axis(np.convolve, 0, x, taps, mode="valid")
        return np.apply_along_axis(np.convolve, 1, x, taps, mode="valid")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def measure(
    quantized: str | Path,
    reference: str | Path,
    backend: str = "onnxruntime",
    num_inference_steps: int | None = None,
    strength: float | None = None,
    guidance_scale: float | None = None,
    size: int | None = None,
    cases=CASES,
) -> dict:
    """PSNR/SSIM of output images and UNet noise-prediction cosine similarity, quantized vs reference.

    None for steps/strength/guidance means the model folder's defaults; `size`: square image side
    (default: the model's native sample size). Returns means and worst cases, plus per-case values.
    """
    from edgesd.pipelines import Img2ImgPipeline

    settings = dict(num_inference_steps=num_inference_steps, strength=strength, guidance_scale=guidance_scale)
    # One pipeline at a time: a full-size model on onnxruntime holds ~12 GB at 512x512, two would not fit.
    ref_pipe = Img2ImgPipeline.load(reference, backend=backend, device="cpu", inference_precision="fp32")
    size = size or ref_pipe.folder.manifest.get("sample_size") or 512
    images = builtin_images(size, len(cases), seed=1)
    recorder = RecordingSession.around(ref_pipe, "unet", keep_outputs=True)
    refs, calls = [], []  # per case: the output image, and the (feeds, outputs) of its UNet calls
    for image, (prompt, seed) in zip(images, cases):
        first_call = len(recorder.feeds)
        refs.append(np.asarray(ref_pipe(image, prompt, seed=seed, **settings).images[0]))
        calls.append(list(zip(recorder.feeds[first_call:], recorder.outputs[first_call:])))
    del ref_pipe, recorder
    gc.collect()

    q_pipe = Img2ImgPipeline.load(quantized, backend=backend, device="cpu", inference_precision="fp32")
    per_case = []
    for image, (prompt, seed), ref, case_calls in zip(images, cases, refs, calls):
        got = np.asarray(q_pipe(image, prompt, seed=seed, **settings).images[0])
        unet_cos = [cosine(output(q_pipe.sessions["unet"].run(feeds), "out_sample"), output(outputs, "out_sample"))
                    for feeds, outputs in case_calls]
        per_case.append({"prompt": prompt, "seed": seed, "psnr": psnr(ref, got), "ssim": ssim(ref, got),
                         "unet_cosine": float(np.mean(unet_cos)) if unet_cos else None})
    unet = [c["unet_cosine"] for c in per_case if c["unet_cosine"] is not None]
    return {
        "backend": backend,
        "size": size,
        "psnr_mean": float(np.mean([c["psnr"] for c in per_case])),
        "psnr_min": float(np.min([c["psnr"] for c in per_case])),
        "ssim_mean": float(np.mean([c["ssim"] for c in per_case])),
        "ssim_min": float(np.min([c["ssim"] for c in per_case])),
        "unet_cosine_mean": float(np.mean(unet)) if unet else None,
        "unet_cosine_min": float(np.min(unet)) if unet else None,
        "cases": per_case,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Fidelity of a quantized edgesd model folder against its fp32 export.")
    parser.add_argument("quantized", help="quantized model folder")
    parser.add_argument("reference", help="fp32 model folder of the same model")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "openvino"))
    parser.add_argument("--steps", type=int, default=None, help="inference steps (default: the model's)")
    parser.add_argument("--strength", type=float, default=None, help="img2img strength (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="square image side (default: the model's)")
    args = parser.parse_args(argv)
    result = measure(args.quantized, args.reference, args.backend, num_inference_steps=args.steps, strength=args.strength,
                     guidance_scale=args.guidance, size=args.size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
