"""The `edgesd` command line. Bad input ends with one line on stderr and exit code 2
(a traceback only with --debug). Commands from other parts of the distribution (`edgesd export`)
are added through the `edgesd.commands` entry points, so this module imports none of them."""

import json
import logging
import statistics
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

import typer

from edgesd.errors import EdgesdError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Stable Diffusion image-to-image on edge devices (ONNX Runtime / OpenVINO, no torch).")
log = logging.getLogger("edgesd")
_debug = False


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs on errors.")):
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s", stream=sys.stderr)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def run_guarded(fn, *args, **kwargs):
    """Run fn; turn edgesd's errors (and Ctrl-C) into one line and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except EdgesdError as e:
        if _debug:
            raise
        fail(str(e))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


@app.command()
def img2img(
    model: Path = typer.Argument(..., help="Model folder written by `edgesd export` (or by optimum's exporters)."),
    image: Path = typer.Option(..., "--image", "-i", help="Input image (PNG, JPEG, WebP, ...)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the output should show (CLIP keeps 77 tokens)."),
    output: Path = typer.Option(Path("out.png"), "--output", "-o", help="Output file; with --num-images N: OUT-0.png ..."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", "-n", help="What to steer away from (needs guidance > 1)."),
    strength: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="0 keeps the input, 1 ignores it. Default: the model's."),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps before strength (int(steps*strength) run). Default: the model's."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="Classifier-free guidance scale; <= 1 turns it off. Default: the model's."),
    seed: Optional[int] = typer.Option(None, min=0, help="Seed; same seed, same image (and diffusers' torch CPU noise). Default: random, printed."),
    scheduler: Optional[str] = typer.Option(None, help="diffusers scheduler class name, e.g. EulerDiscreteScheduler. Default: the model's."),
    num_images: int = typer.Option(1, "--num-images", min=1, help="Images from one prompt and seed (one batch)."),
    backend: str = typer.Option("auto", help="onnxruntime, openvino or auto."),
    device: str = typer.Option("auto", help="cpu, gpu (OpenVINO), cuda (onnxruntime-gpu), npu or auto."),
    precision: str = typer.Option("auto", "--precision", help="Inference precision: auto (engine's fastest), fp32 (exact), bf16, fp16."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for onnxruntime (default: all cores)."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
):
    """Transform IMAGE with PROMPT using the model folder MODEL."""
    from edgesd.outputs import check_writable, output_paths, save_image
    from edgesd.pipeline import Img2ImgPipeline

    paths = output_paths(output, num_images)
    run_guarded(check_writable, paths, overwrite)
    t0 = time.perf_counter()
    pipe = run_guarded(Img2ImgPipeline.load, model, backend=backend, device=device, inference_precision=precision, threads=threads)
    load_time = time.perf_counter() - t0
    with _progress(enabled=not quiet and sys.stderr.isatty()) as callback:
        result = run_guarded(pipe, image, prompt, negative_prompt=negative_prompt, strength=strength,
                             num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                             num_images=num_images, scheduler=scheduler, callback=callback)
    parameters = {**result.settings, "model": pipe.folder.name, "manifest_sha256": pipe.folder.manifest_sha256,
                  "edgesd_version": _version()}
    for im, path in zip(result.images, paths):
        save_image(im, path, parameters)
    timings = {"load": load_time, **result.timings}
    if as_json:
        typer.echo(json.dumps({"outputs": [str(p) for p in paths], "seed": result.seed, "backend": pipe.backend,
                               "settings": result.settings, "timings": timings}))
    elif not quiet:
        per_step = statistics.median(timings["steps"]) if timings["steps"] else 0.0
        typer.echo(f"wrote {', '.join(map(str, paths))} (seed {result.seed}, {pipe.backend})", err=True)
        typer.echo(f"load {load_time:.2f}s, {len(timings['steps'])} steps at {per_step:.3f}s, total {timings['total']:.2f}s", err=True)


class _progress:
    """A rich progress bar on a terminal; a no-op callback otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TimeRemainingColumn

        self.bar = Progress("denoising", BarColumn(), "{task.completed}/{task.total}", TimeRemainingColumn(), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("steps", total=None)
        return lambda step, total, latents: self.bar.update(self.task, completed=step, total=total)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model folder to describe."),
    verify: bool = typer.Option(False, help="Re-hash every file and fail on a mismatch or a missing file."),
):
    """Show a model folder's manifest: family, defaults, submodels, validation, provenance."""
    from edgesd.model_folder import open_model_folder

    folder = run_guarded(open_model_folder, model)
    m = folder.manifest
    typer.echo(f"{folder.path}  (format {m['format_version']}, family {m['family']}, {m['prediction_type']} prediction)")
    typer.echo(f"latents: {m['latent_channels']} channels, VAE scale factor {m['vae_scale_factor']}, "
               f"scaling factor {m['vae_scaling_factor']}; sample size {m.get('sample_size', '?')}")
    typer.echo("defaults: " + ", ".join(f"{k}={v}" for k, v in folder.defaults.items()))
    typer.echo(f"{'submodel':<14}{'format':<10}{'precision':<11}{'size':>10}  max |export - torch|")
    for name, entry in m["submodels"].items():
        for fmt, spec in entry["formats"].items():
            size = sum(f.get("bytes", 0) for f in spec.get("files", {}).values())
            dev = entry.get("validation_max_abs_deviation", {}).get({"onnx": "onnxruntime"}.get(fmt, fmt))
            typer.echo(f"{name:<14}{fmt:<10}{spec.get('precision', '?'):<11}{size / 2**20:>8.1f}MB  "
                       + ("-" if dev is None else f"{dev:.2e}"))
    prov = m.get("provenance", {})
    typer.echo(f"source: {prov.get('source')} (revision {prov.get('revision')}), created {prov.get('created')}")
    if verify:
        problems = folder.verify(hashes=True)
        if problems:
            fail(f"{folder.path} failed verification: {'; '.join(problems)}")
        typer.echo("verified: every file matches its sha256")


def _version() -> str:
    from edgesd import __version__

    return __version__


def main() -> None:
    for entry in entry_points(group="edgesd.commands"):
        entry.load()(app)
    app()
