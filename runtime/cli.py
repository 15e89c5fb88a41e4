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
from edgesd.image import MAX_PIXELS

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
        exit_with(e)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def exit_with(error: EdgesdError) -> None:
    if _debug:
        raise error
    fail(str(error))


@app.command()
def img2img(
    model: Optional[Path] = typer.Argument(None, help="Model folder written by `edgesd export` (or by optimum's exporters); with --replay, default: the one stored in the PNG."),
    image: Path = typer.Option(..., "--image", "-i", help="Input image (PNG, JPEG, WebP, ...), or a folder of them (batch)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What the output should show (CLIP keeps 77 tokens)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file (default out.png; with --num-images N: OUT-0.png ...), or folder for a batch (default IMAGE/edgesd-out)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", "-n", help="What to steer away from (needs guidance > 1)."),
    strength: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="0 keeps the input, 1 ignores it. Default: the model's."),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps before strength (int(steps*strength) run). Default: the model's."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="Classifier-free guidance scale; <= 1 turns it off. Default: the model's."),
    seed: Optional[int] = typer.Option(None, min=0, help="Seed: same seed, same images (diffusers' torch CPU noise). Default: random, printed. A batch uses it for every input."),
    scheduler: Optional[str] = typer.Option(None, help="diffusers scheduler class name, e.g. EulerDiscreteScheduler. Default: the model's."),
    num_images: Optional[int] = typer.Option(None, "--num-images", min=1, help="Images per input from one prompt and seed, in one batch (image k of N depends on N). Default 1."),
    replay: Optional[Path] = typer.Option(None, help="Reuse the parameters stored in a PNG edgesd wrote (with the same --image, the same image)."),
    backend: str = typer.Option("auto", help="onnxruntime, openvino or auto."),
    device: str = typer.Option("auto", help="cpu, gpu (OpenVINO), cuda (onnxruntime-gpu), npu or auto."),
    precision: str = typer.Option("auto", "--precision", help="Inference precision: auto (engine's fastest), fp32 (exact), bf16, fp16."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for onnxruntime (default: all cores)."),
    low_memory: bool = typer.Option(False, help="Keep only the submodel in use loaded and tile the VAE for large images (less memory, slower)."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help="Refuse inputs with more pixels than this (memory grows with image size)."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs (a batch otherwise skips inputs already done)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
):
    """Transform IMAGE with PROMPT using the model folder MODEL."""
    from edgesd.jobs import plan_jobs, read_parameters
    from edgesd.outputs import save_image
    from edgesd.pipeline import Img2ImgPipeline

    given = dict(prompt=prompt, negative_prompt=negative_prompt, strength=strength, num_inference_steps=steps,
                 guidance_scale=guidance, seed=seed, scheduler=scheduler, num_images=num_images)
    stored = run_guarded(read_parameters, replay) if replay else {}
    settings = {k: v if v is not None else stored.get(k) for k, v in given.items()}
    settings["num_images"] = settings["num_images"] or 1
    if settings["prompt"] is None:
        fail("--prompt is required (or --replay a PNG written by edgesd)")
    model = model or (Path(stored["model_path"]) if stored.get("model_path") else None)
    if model is None:
        fail("MODEL is required: the model folder to run")
    # A replay regenerates the stored batch and keeps the stored image of it.
    jobs, skipped = run_guarded(plan_jobs, image, output, 1 if replay else settings["num_images"], overwrite)
    for path in skipped:
        typer.echo(f"skipped {path}: its output exists (--overwrite to redo)", err=True)
    t0 = time.perf_counter()
    pipe = run_guarded(Img2ImgPipeline.load, model, backend=backend, device=device, inference_precision=precision,
                       threads=threads, low_memory=low_memory)
    pipe.max_pixels = max_pixels
    if stored and stored.get("manifest_sha256") not in (None, pipe.folder.manifest_sha256):
        typer.echo(f"warning: {replay} was made with another model ({stored.get('model')}); the image will differ", err=True)
    load_time = time.perf_counter() - t0
    provenance = {"model": pipe.folder.name, "model_path": str(pipe.folder.path.resolve()),
                  "manifest_sha256": pipe.folder.manifest_sha256, "edgesd_version": _version()}
    done, failures = [], []
    show = not quiet and sys.stderr.isatty()
    for n, job in enumerate(jobs, 1):
        label = f"[{n}/{len(jobs)}] {job.image.name}" if len(jobs) > 1 else "denoising"
        try:
            with _progress(show, label) as callback:
                result = pipe(job.image, callback=callback, **settings)
        except EdgesdError as e:
            if len(jobs) == 1:
                exit_with(e)
            failures.append({"image": str(job.image), "error": str(e)})
            typer.echo(f"failed {job.image}: {e}", err=True)
            continue
        images = [result.images[stored.get("index", 0)]] if replay else result.images
        for index, (im, path) in enumerate(zip(images, job.outputs)):
            index = stored.get("index", 0) if replay else index
            save_image(im, path, {**result.settings, "index": index, **provenance})
        done.append({"image": str(job.image), "outputs": [str(p) for p in job.outputs[: len(images)]],
                     "seed": result.seed, "timings": result.timings})
        if not quiet and not as_json:
            steps_run = result.timings["steps"]
            per_step = statistics.median(steps_run) if steps_run else 0.0
            typer.echo(f"wrote {', '.join(done[-1]['outputs'])} (seed {result.seed}; {len(steps_run)} steps at "
                       f"{per_step:.3f}s, total {result.timings['total']:.2f}s)", err=True)
    if as_json:
        typer.echo(json.dumps({"results": done, "failures": failures, "skipped": [str(p) for p in skipped],
                               "backend": pipe.backend, "load_seconds": load_time,
                               **({"outputs": done[0]["outputs"], "seed": done[0]["seed"]} if len(done) == 1 else {})}))
    elif not quiet:
        typer.echo(f"{pipe.backend}, load {load_time:.2f}s", err=True)
    if failures:
        typer.echo(f"error: {len(failures)} of {len(jobs)} inputs failed", err=True)
        raise typer.Exit(1)


class _progress:
    """A rich progress bar on a terminal; a no-op callback otherwise."""

    def __init__(self, enabled: bool, label: str = "denoising"):
        self.enabled = enabled
        self.label = label

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TimeRemainingColumn

        self.bar = Progress(self.label, BarColumn(), "{task.completed}/{task.total}", TimeRemainingColumn(), transient=True)
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
    typer.echo(f"{'submodel':<14}{'format':<10}{'precision':<14}{'size':>10}  max |export - torch|  (quantized: vs fp32)")
    for name, entry in m["submodels"].items():
        for fmt, spec in entry["formats"].items():
            size = sum(f.get("bytes", 0) for f in spec.get("files", {}).values())
            backend = {"onnx": "onnxruntime"}.get(fmt, fmt)
            dev = entry.get("validation_max_abs_deviation", {}).get(backend)
            quantized = entry.get("quantized_max_abs_deviation", {}).get(backend)
            typer.echo(f"{name:<14}{fmt:<10}{spec.get('precision', '?'):<14}{size / 2**20:>8.1f}MB  "
                       + ("-" if dev is None else f"{dev:.2e}")
                       + ("" if quantized is None else f"  ({quantized:.2e}; {spec.get('method', '')})"))
    prov = m.get("provenance", {})
    typer.echo(f"source: {prov.get('source')} (revision {prov.get('revision')}), created {prov.get('created')}")
    if verify:
        problems = folder.verify(hashes=True)
        if problems:
            fail(f"{folder.path} failed verification: {'; '.join(problems)}")
        typer.echo("verified: every file matches its sha256")


@app.command()
def bench(
    model: Path = typer.Argument(..., help="Model folder to benchmark."),
    backend: str = typer.Option("auto", help="onnxruntime, openvino or auto."),
    device: str = typer.Option("auto", help="cpu, gpu, cuda, npu or auto."),
    precision: str = typer.Option("auto", "--precision", help="Inference precision: auto, fp32, bf16, fp16."),
    resolution: int = typer.Option(512, min=8, help="Square input side in pixels."),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps (default: the model's)."),
    strength: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Strength (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="Guidance scale (default: the model's)."),
    repeat: int = typer.Option(3, min=1, help="Timed warm runs."),
    warmup: int = typer.Option(1, min=0, help="Untimed runs after the cold start."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for onnxruntime."),
    low_memory: bool = typer.Option(False, help="Measure the low-memory mode (one submodel loaded at a time, tiled VAE)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON to this file."),
):
    """Measure cold start, per-stage warm latency (median, min, max), peak memory and model size."""
    from edgesd.bench import run_benchmark

    result = run_guarded(run_benchmark, model, backend=backend, device=device, precision=precision, resolution=resolution,
                         steps=steps, strength=strength, guidance=guidance, repeat=repeat, warmup=warmup, threads=threads,
                         low_memory=low_memory)
    typer.echo(f"{result['model']} on {result['backend']}{' (low memory)' if low_memory else ''}, {resolution}x{resolution}, "
               f"{result['unet_steps']} UNet steps, precision {precision}")
    typer.echo(f"cold start: load {result['cold_start']['load']:.2f}s, first run {result['cold_start']['first_run']:.2f}s")
    for stage, s in result["warm"].items():
        typer.echo(f"  {stage:<7} median {s['median'] * 1000:9.1f} ms   [{s['min'] * 1000:.1f} .. {s['max'] * 1000:.1f}]  n={s['n']}")
    typer.echo(f"peak memory {result['peak_rss_mib']:.0f} MiB, model folder {result['model_folder_mib']:.1f} MiB")
    if json_file:
        from edgesd.outputs import write_text_atomic

        write_text_atomic(json_file, json.dumps(result, indent=2))


def _version() -> str:
    from edgesd import __version__

    return __version__


def main() -> None:
    for entry in entry_points(group="edgesd.commands"):
        entry.load()(app)
    app()
