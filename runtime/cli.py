"""The `edgesd` command line. Bad input ends with one line on stderr and exit code 2
(a traceback only with --debug). Commands from other parts of the distribution (`edgesd export`)
are added through the `edgesd.commands` entry points, so this module imports none of them."""

import inspect
import json
import logging
import os
import secrets
import signal
import sys
import threading
from enum import Enum
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

import typer

from edgesd.errors import EdgesdError

try:  # newer typer vendors click
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors
from edgesd.limits import MAX_GUIDANCE, MAX_PIXELS, MAX_SIDE, MAX_THREADS
from edgesd.schema import MASKED_CONTENT

MaskedContent = Enum("MaskedContent", {c.replace(" ", "_"): c.replace(" ", "-") for c in MASKED_CONTENT}, type=str)  # CLI spelling

# Plain click help (rich's boxed tables truncate options at 80 columns).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Stable Diffusion image-to-image on edge devices (ONNX Runtime / OpenVINO, no torch).\n\n"
                       "Exit codes: 0 done; 1 some inputs of a folder failed (the others were written); 2 bad input, "
                       "options or model (one line on stderr, nothing written); 130 interrupted.")
log = logging.getLogger("edgesd")
_debug = False
_json_errors = False


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"edgesd {_version()}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks, debug logs and the exporters' warnings."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."),
):
    global _debug
    _debug = debug
    # edgesd's own messages; other libraries' only from warnings up (onnxruntime's graph tools log each pass)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if debug else logging.INFO)


def _quiet(quiet: bool) -> None:
    """-q: errors only (no warnings, progress or summaries)."""
    if quiet and not _debug:
        log.setLevel(logging.ERROR)
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # hub downloads


def debugging() -> bool:
    return _debug


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    if _json_errors:  # a --json caller always gets JSON on stdout
        typer.echo(json.dumps({"error": message}))
    raise typer.Exit(2)


def run_guarded(fn, *args, **kwargs):
    """Run fn; turn edgesd's errors (and Ctrl-C) into one line and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except EdgesdError as e:
        exit_with(e)
    except KeyboardInterrupt as e:
        typer.echo("interrupted", err=True)
        raise typer.Exit(getattr(e, "code", 130))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that cleanups run (temporary files, claims) as on Ctrl-C."""
    code = 143


def _raise_terminated(signum, frame):
    raise Terminated()


def exit_with(error: EdgesdError) -> None:
    if _debug:
        raise error
    fail(error.cli)


_LORA_HELP = ("A LoRA (.safetensors, kohya or diffusers format) merged into the model as it loads, with its weight "
              "(default 1), e.g. style.safetensors:0.8; repeat for several.")


_VAE_HELP = ("A VAE folder to use instead of the model's: a tiny VAE exported with `edgesd export madebyollin/taesd "
             "-o FOLDER` encodes and decodes several times faster, at some cost in detail.")


_CONTROLNET_HELP = ("A ControlNet folder (`edgesd export lllyasviel/control_v11p_sd15_canny -o FOLDER`) that steers the "
                    "image by its --control-image, with its conditioning scale (default: 0.8 img2img, 0.5 inpaint/outpaint), "
                    "e.g. models/canny:0.6; repeat for several (Multi-ControlNet).")


def parse_weighted(spec: str) -> tuple[str, float | None]:
    """PATH[:NUMBER] -> (path, number or None); a colon not followed by a number belongs to the path."""
    path, _, text = spec.rpartition(":")
    try:
        return (path, float(text)) if path else (spec, None)
    except ValueError:
        return spec, None


def parse_lora(spec: str):
    """FILE[:WEIGHT] -> the LoRA read (errors before the model loads); a colon not followed by a
    number belongs to the path."""
    from edgesd.replay import given_loras

    return given_loras([parse_weighted(spec)], {})[0]


def _shared_options(
    model: Optional[Path] = typer.Argument(None, help="Model folder written by `edgesd export` (or by optimum's exporters), or a hub repo (OWNER/REPO) holding one: downloaded once, only what the engine needs; with --replay, default: the one stored in the image.", show_default=False),
    image: Path = typer.Option(..., "--image", "-i", help="Input image (PNG, JPEG, WebP, BMP, TIFF), or a folder of them (batch).", show_default=False),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What the output should show (CLIP keeps 77 tokens).", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file (.png, .jpg, .webp; default out.png), or a folder for a batch (default IMAGE/edgesd-out).", show_default=False),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", "-n", help="What to steer away from (needs guidance > 1).", show_default=False),
    prompt_2: Optional[str] = typer.Option(None, "--prompt-2", help="SDXL: the prompt for the second text encoder. Default: --prompt.", show_default=False),
    negative_prompt_2: Optional[str] = typer.Option(None, "--negative-prompt-2", help="SDXL: the negative prompt for the second text encoder. Default: --negative-prompt.", show_default=False),
    aesthetic_score: Optional[float] = typer.Option(None, "--aesthetic-score", min=0.0, max=10.0, help="SDXL refiners: the aesthetic score conditioned on (default 6).", show_default=False),
    strength: Optional[str] = typer.Option(None, metavar="S[,S...]", help="0 keeps the input, 1 ignores it; a list (0.3,0.5,0.7) runs each. Default: the model's.", show_default=False),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps before strength (int(steps*strength) run). Default: the model's.", show_default=False),
    guidance: Optional[str] = typer.Option(None, metavar="G[,G...]", help="Classifier-free guidance scale, <= 1 turns it off; a list runs each. Default: the model's.", show_default=False),
    seed: Optional[str] = typer.Option(None, metavar="N[,N...]", help="Same seed, same images (diffusers' torch CPU noise); a list runs each. Default: random, printed.", show_default=False),
    scheduler: Optional[str] = typer.Option(None, help="diffusers scheduler class name (EulerDiscreteScheduler) or an A1111 sampler name (\"DPM++ 2M Karras\", \"Euler a\"); \"NAME Karras\" (a sampler or a class) uses Karras sigmas, as diffusers' use_karras_sigmas=True. Default: the model's.", show_default=False),
    num_images: Optional[int] = typer.Option(None, "--num-images", min=1, help="Images per run from one prompt and seed, in one batch (OUT-0.png ...). Default 1.", show_default=False),
    seed_per_image: bool = typer.Option(False, "--seed-per-image", help="With --num-images N: one call per image with seed + i (AUTOMATIC1111's rule), so each is reproducible alone (OUT-seedS.png ...), as --seed S,S+1,... does; slower than one batch."),
    resize: Optional[str] = typer.Option(None, metavar="WxH", help="Resize the input to WxH first, e.g. 768x512.", show_default=False),
    width: Optional[int] = typer.Option(None, min=8, max=MAX_SIDE, help="Resize the input to this width first (keeps the aspect ratio unless --height is given).", show_default=False),
    height: Optional[int] = typer.Option(None, min=8, max=MAX_SIDE, help="Resize the input to this height first (keeps the aspect ratio unless --width is given).", show_default=False),
    keep_size: bool = typer.Option(False, "--keep-size", help="Run inputs at their own size. By default an input larger than the model's native area (512x512 for SD 1.5) is resized to that area, aspect kept: faster, and SD models repeat content far above it."),
    grid: bool = typer.Option(False, help="Also write a labelled contact sheet of each input's images (OUT-grid.png)."),
    iterations: int = typer.Option(1, min=1, help="Feed each output back as the next input, N times (OUT-iter1.png ...; seed + 1 each time)."),
    replay: Optional[Path] = typer.Option(None, help="Reuse the parameters stored in an image edgesd wrote (with the same --image, the same image).", show_default=False),
    lora: Optional[list[str]] = typer.Option(None, "--lora", metavar="FILE[:WEIGHT]", help=_LORA_HELP, show_default=False),
    vae: Optional[Path] = typer.Option(None, "--vae", metavar="FOLDER", help=_VAE_HELP, show_default=False),
    vae_decode_only: bool = typer.Option(False, "--vae-decode-only", help="Use --vae for decoding only (fast previews; the model's VAE encodes)."),
    controlnet: Optional[list[str]] = typer.Option(None, "--controlnet", metavar="FOLDER[:SCALE]", help=_CONTROLNET_HELP, show_default=False),
    control_image: Optional[list[str]] = typer.Option(None, "--control-image", metavar="FILE|canny|depth", help="The control image of each --controlnet, in order: a file (a control map), canny (the Canny edges of each input) or depth (its depth map by --depth-model); `edgesd control canny|depth IMAGE -o map.png` shows them.", show_default=False),
    depth_model: Optional[Path] = typer.Option(None, "--depth-model", metavar="FOLDER", help="The depth estimator folder --control-image depth runs (`edgesd export Intel/dpt-hybrid-midas -o FOLDER`).", show_default=False),
    guess_mode: bool = typer.Option(False, "--guess-mode", help="ControlNets steer the prompted half of guidance only, their deeper blocks more (diffusers' guess mode): for empty or weak prompts."),
    control_start: Optional[float] = typer.Option(None, "--control-start", min=0.0, max=1.0, help="ControlNets act from this fraction of the steps (default 0).", show_default=False),
    control_end: Optional[float] = typer.Option(None, "--control-end", min=0.0, max=1.0, help="ControlNets act up to this fraction of the steps (default 1).", show_default=False),
    revision: Optional[str] = typer.Option(None, help="The hub repo's branch, tag or commit, when MODEL is OWNER/REPO.", show_default=False),
    backend: Optional[str] = typer.Option(None, help="onnxruntime, openvino or auto. Default: auto (with --replay, the stored one).", show_default=False),
    device: str = typer.Option("auto", help="cpu, gpu (OpenVINO), cuda (onnxruntime-gpu), npu or auto."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Inference precision: auto (engine's fastest), fp32 (exact), bf16, fp16. Default: auto.", show_default=False),
    threads: Optional[int] = typer.Option(None, min=1, max=MAX_THREADS, help="CPU threads for the engine (default: all cores).", show_default=False),
    low_memory: bool = typer.Option(False, help="Keep only the submodel in use loaded and tile the VAE for large images (less memory, slower)."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help="Refuse inputs with more pixels than this."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs (a batch otherwise skips inputs already done)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Run the inputs on a Ray cluster (pip install 'edgesd[ray]'): --ray alone starts one on this machine, --ray auto or --ray HOST:PORT joins a running one. Outputs are the local run's; each node reads its inputs and writes its outputs, so give folders every node sees (shared storage), and a hub MODEL to have each node download it once.", show_default=False),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, help="With --ray: how many pipelines run at once, each asking Ray for --threads CPUs (default: the cluster's CPUs shared out) and the memory the model needs. Default: one per node.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result on stdout (also when inputs fail)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
):
    """The options every generating command (img2img, inpaint) takes; see _task_command."""


def _img2img_options(
    refiner: Optional[Path] = typer.Option(None, "--refiner", metavar="FOLDER", help="SDXL: a refiner model folder that finishes what MODEL starts (diffusers' ensemble of expert denoisers): MODEL denoises the first --high-noise-frac of the steps, the refiner the rest.", show_default=False),
    high_noise_frac: float = typer.Option(0.8, "--high-noise-frac", min=0.0, max=1.0, help="With --refiner: the fraction of the denoising MODEL does."),
):
    """What img2img adds to the shared options."""


def _inpaint_options(
    mask: Path = typer.Option(..., "--mask", "-m", help="Mask image: white repaints, black keeps (grey >= 50% repaints).", show_default=False),
    padding_mask_crop: Optional[int] = typer.Option(None, "--padding-mask-crop", min=0, max=MAX_SIDE, metavar="PX", help="Inpaint only the mask's box grown by PX pixels, at full size, and paste it back (sharper small repairs).", show_default=False),
    masked_content: Optional[MaskedContent] = typer.Option(None, "--masked-content", help="What the masked area starts from (AUTOMATIC1111's choices): the input (original, the default), the colours around it (fill: new things where the input has none), latent noise, or latent nothing.", show_default=False),
):
    """What inpaint adds to the shared options."""


def _outpaint_options(
    left: int = typer.Option(0, min=0, max=MAX_SIDE, help="Pixels to add on the left."),
    right: int = typer.Option(0, min=0, max=MAX_SIDE, help="Pixels to add on the right (rounded up to the model's multiple, said when it is)."),
    top: int = typer.Option(0, min=0, max=MAX_SIDE, help="Pixels to add on top."),
    bottom: int = typer.Option(0, min=0, max=MAX_SIDE, help="Pixels to add at the bottom (rounded up like --right)."),
    overlap: Optional[int] = typer.Option(None, min=0, max=MAX_SIDE, help="How far the repainted band reaches into the image, so the seam blends. Default: 2 latent cells (16 px on SD).", show_default=False),
):
    """What outpaint adds to the shared options."""


def _task_command(task: str, help: str, extra=None) -> None:
    """Register `edgesd TASK` with the shared options (and `extra`'s), running generate(task, ...)."""
    params = [*inspect.signature(_shared_options).parameters.values()]
    if extra is not None:
        params[2:2] = inspect.signature(extra).parameters.values()  # after MODEL and --image

    def command(**options):
        generate(task, **options)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__, command.__doc__ = task, help
    app.command(name=task)(command)


def generate(task: str, model, image, prompt, output, negative_prompt, prompt_2, negative_prompt_2, aesthetic_score,
             strength, steps, guidance, seed, scheduler, num_images, seed_per_image, resize, width, height, keep_size, grid,
             iterations,
             replay, lora,
             vae, vae_decode_only, controlnet, control_image, depth_model, guess_mode, control_start, control_end, revision,
             backend, device,
             precision, threads, low_memory, max_pixels, overwrite, ray, ray_workers, as_json, quiet, mask=None, **task_options):
    """Run TASK over one input or a folder of inputs, with sweeps, iterations, replay and outputs.
    `mask` and `task_options`: img2img's (refiner, high_noise_frac), inpaint's (padding_mask_crop) or outpaint's
    (left, right, top, bottom, overlap)."""
    from edgesd.families import SDXL_OPTIONS
    from edgesd.image import load_image
    from edgesd.jobs import plan_jobs
    from edgesd.batch import PIPELINES, Batch, Runner, Summary, job_size, run_here, run_on_ray
    from edgesd.outputs import read_parameters
    from edgesd.replay import given_loras, places, recorded_loras, recorded_vae
    from edgesd.schema import hub_repo_id
    from edgesd.pipelines import check_memory, outpaint_canvas, plan_load, processing_size, resolve_settings
    from edgesd.variations import parse_list, variants
    from edgesd.control import PREPROCESSORS
    from edgesd.model_folder import open_component_folder

    global _json_errors
    _json_errors = as_json
    _quiet(quiet)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    stored = run_guarded(read_parameters, replay) if replay else {}
    lists = {"strength": run_guarded(parse_list, strength, float, "--strength", 0.0, 1.0),
             "seed": run_guarded(parse_list, seed, int, "--seed", 0, 2**64 - 1),
             "guidance_scale": run_guarded(parse_list, guidance, float, "--guidance", 0.0, MAX_GUIDANCE)}
    given = dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, scheduler=scheduler,
                 num_images=num_images, **{k: v[0] for k, v in lists.items()},
                 **{**dict.fromkeys(SDXL_OPTIONS), "prompt_2": prompt_2, "negative_prompt_2": negative_prompt_2,
                    "aesthetic_score": aesthetic_score},
                 controlnet_conditioning_scale=None, guess_mode=guess_mode or None, control_guidance_start=control_start,
                 control_guidance_end=control_end)
    settings = {k: v if v is not None else stored.get(k) for k, v in given.items()}
    settings["num_images"] = settings["num_images"] or 1
    if seed_per_image and settings["num_images"] > 1:  # the batch as a seed sweep: seed, seed + 1, ...
        if len(lists["seed"]) > 1:
            fail("--seed-per-image takes one --seed (the first image's)")
        first = secrets.randbelow(2**63) if settings["seed"] is None else settings["seed"]
        if first + settings["num_images"] > 2**64:
            fail(f"--seed {first} with --num-images {settings['num_images']} goes past the largest seed, 2**64 - 1")
        lists["seed"], settings["seed"], settings["num_images"] = [first + i for i in range(settings["num_images"])], first, 1
    if replay and num_images is not None and num_images != stored.get("num_images", 1):
        fail("--replay regenerates the stored batch of --num-images; drop --num-images")
    if iterations > 1 and (settings["seed"] or 0) + iterations > 2**64:
        fail(f"--seed {settings['seed']} with --iterations {iterations} goes past the largest seed, 2**64 - 1")
    if iterations > 1 and settings["seed"] is None:  # one random seed, then seed + 1 each pass
        settings["seed"] = lists["seed"][0] = secrets.randbelow(2**63)
    size = run_guarded(_requested_size, resize, width, height) or (tuple(stored["size"]) if stored.get("size") else None)
    backend = backend or stored.get("backend") or "auto"  # a replay's precision is compared, not forced (see below)
    precision = precision or "auto"
    runs = variants(lists)
    if settings["prompt"] is None:
        fail("--prompt is required (or --replay an image written by edgesd)")
    if iterations > 1 and (len(runs) > 1 or settings["num_images"] > 1):
        fail("--iterations chains one image: give one strength, seed and guidance, and no --num-images")
    if task == "outpaint" and not any(task_options[side] for side in ("left", "right", "top", "bottom")):
        if not stored.get("extension"):
            fail("outpaint needs pixels to add: --left, --right, --top and/or --bottom")
        task_options = {**task_options, **stored["extension"]}  # a replay: the stored extension
    loras = run_guarded(given_loras, [parse_weighted(spec) for spec in lora or ()], stored)
    if ray_workers is not None and ray is None:
        fail("--ray-workers is for --ray: add --ray (a cluster on this machine) or --ray ADDRESS")
    if vae_decode_only and vae is None:
        fail("--vae-decode-only needs --vae FOLDER")
    controlnets = [parse_weighted(spec) for spec in controlnet or ()]
    if len(control_image or ()) != len(controlnets):
        fail(f"{len(control_image or ())} --control-image for {len(controlnets)} --controlnet: give one each, in order "
             f"(a file, or {' / '.join(PREPROCESSORS)} to derive it from each input)")
    if ("depth" in (control_image or ())) != (depth_model is not None):
        fail("--control-image depth needs --depth-model FOLDER (edgesd export Intel/dpt-hybrid-midas -o FOLDER)"
             if depth_model is None else "--depth-model is for --control-image depth; drop it or add that")
    if depth_model is not None:
        run_guarded(open_component_folder, depth_model, "depth")
    if controlnets and task_options.get("refiner"):
        fail("--controlnet with --refiner: the refiner takes no ControlNet; run them apart")
    if controlnets and any(scale is not None for _, scale in controlnets):
        default = PIPELINES[task].control_scale
        settings["controlnet_conditioning_scale"] = [default if scale is None else scale for _, scale in controlnets]
    from_hub = model is None and bool(stored.get("hub_revision"))  # a replay of a hub model: its repo and commit,
    if from_hub:  # from the hub only: what an image says never names a local folder
        model, revision = run_guarded(hub_repo_id, stored.get("model", "")), revision or stored["hub_revision"]
    if model is None:  # images carry no local paths: a local model is named again
        fail(f"MODEL is required: the model folder to run{' (the image was made with ' + repr(stored['model']) + ')' if stored.get('model') else ''}")
    if replay:  # what the image names but cannot carry, found again by name and sha256 unless given
        where, restored = places(replay, model), []
        if not lora and stored.get("loras"):
            loras = run_guarded(recorded_loras, stored, where)
            restored += [entry.path for entry in loras]
        if vae is None and (found := recorded_vae(stored, where)):
            vae, vae_decode_only = found[0].path, found[1]
            restored.append(vae)
        for path in restored if not (quiet or as_json) else ():
            typer.echo(f"replay: using {path} (named in {replay.name}, the same sha256)", err=True)
    # Everything that can be checked without the weights is, before the (slow) load: the pipeline's own
    # checks (plan_load: the folder, downloaded if a hub repo, its family, the VAE, the engine), then the call's.
    load_plan = run_guarded(plan_load, model, backend, device, vae, revision, from_hub,
                            [Path(folder) for folder, _ in controlnets] or None)
    folder, backend = load_plan.folder, load_plan.backend
    run_guarded(PIPELINES[task].check_folder, folder)
    refiner_plan = task_options.get("refiner") and run_guarded(plan_load, task_options["refiner"], backend, device)
    last_seed = (settings["seed"] or 0) + iterations - 1
    pipeline = PIPELINES[task]
    hand_off = {"denoising_end": task_options["high_noise_frac"]} if refiner_plan else {}
    resolved = [run_guarded(resolve_settings, folder, **{**settings, "seed": last_seed, **run.overrides, **hand_off},
                            task_defaults=pipeline.task_defaults, controlnets=len(controlnets),
                            control_scale=pipeline.control_scale)[0] for run in runs]
    maps = [None if name in PREPROCESSORS else run_guarded(load_image, Path(name), max_pixels) for name in control_image or ()]
    if refiner_plan:  # the refiner's part of each run leaves steps too
        for run in runs:
            run_guarded(resolve_settings, refiner_plan.folder, **{**settings, "seed": last_seed, **run.overrides,
                                                                   "denoising_start": task_options["high_noise_frac"]})
    # A replay regenerates the stored batch and keeps the stored image of it.
    per_run = 1 if replay else settings["num_images"]
    suffixes = [run.suffix for run in runs] if iterations == 1 else [f"-iter{k}" for k in range(1, iterations + 1)]
    plan = run_guarded(plan_jobs, image, output, per_run, overwrite, suffixes, grid, [p for p in (mask, replay) if p])
    say = (lambda text: None) if quiet or as_json else (lambda text: typer.echo(text, err=True))
    skipped = [{"image": str(p), "reason": why} for p, why in plan.skipped]
    for entry in skipped:
        say(f"skipped {entry['image']}: {entry['reason']}")
    if not plan.jobs:  # all done already: no need for the model
        if as_json:
            typer.echo(json.dumps({"results": [], "failures": [], "skipped": skipped}))
        return
    if mask is not None:
        run_guarded(load_image, mask, max_pixels, keep_gray=True)
    if task == "inpaint":
        crop, content = task_options["padding_mask_crop"], task_options["masked_content"]
        call_options = {"mask_image": mask, "padding_mask_crop": stored.get("padding_mask_crop") if crop is None else crop,
                        "masked_content": (stored.get("masked_content") or "original") if content is None
                        else content.value.replace("-", " ")}
    else:  # outpaint's sides; img2img's refiner options are the Batch's own
        call_options = task_options if task == "outpaint" else {}
    batch = Batch(task, load_plan, settings, runs, iterations, size, keep_size, call_options, max_pixels=max_pixels,
                  open_options=dict(device=device, inference_precision=precision, threads=threads, low_memory=low_memory,
                                    loras=loras, vae_decode_only=vae_decode_only),
                  refiner=refiner_plan or None, high_noise_frac=task_options.get("high_noise_frac", 0.8),
                  control_images=[made or name for made, name in zip(maps, control_image or ())], depth_model=depth_model,
                  replay_index=stored.get("index", 0) if replay else None, overwrite=overwrite, grid=grid, cli=True)
    if not image.is_dir():  # sized as the call will size it, by the batch's and the pipeline's own functions
        first = run_guarded(load_image, image, max_pixels).size
        asked = job_size(batch, first, folder.native_size)
        if task == "outpaint":  # the canvas (the stored extension on a replay)
            sides = {k: v for k, v in task_options.items() if k != "overlap"}
            width, height = run_guarded(outpaint_canvas, folder, first, **sides, requested=asked, max_pixels=max_pixels)[1]
        else:
            width, height = run_guarded(processing_size, folder, first, asked, max_pixels)[1]
        guided = any(r["guidance_scale"] > 1 for r in resolved)
        run_guarded(check_memory, load_plan, width, height, settings["num_images"], guided, low_memory,
                    vae_decode_only=vae_decode_only, what=f"{image.name} at {width}x{height} on {backend}")
    summary = Summary(skipped=skipped)
    show = not quiet and not as_json and sys.stderr.isatty()
    warn = partial(typer.echo, err=True)

    def report() -> None:
        if as_json:
            done = summary.done
            typer.echo(json.dumps({"results": done, "failures": summary.failures, "skipped": summary.skipped,
                                   "backend": summary.backend, "load_seconds": summary.load_seconds,
                                   **({"outputs": done[0]["outputs"], "seed": done[0]["seed"]} if len(done) == 1 else {})}))

    try:
        if ray is not None:
            run_on_ray(batch, plan.jobs, summary, ray, ray_workers, say, warn, quiet or as_json)
        else:
            runner = run_guarded(Runner, batch)
            if stored:
                _warn_replay_differences(stored, task, runner.pipe, image, mask, replay)
            run_here(runner, plan.jobs, summary, single=not image.is_dir(), reraise=not image.is_dir() and not as_json,
                     progress=partial(_progress, show), say=say, warn=warn)
    except EdgesdError as e:  # the run as a whole (one input, or Ray): one line, no summary
        exit_with(e)
    except KeyboardInterrupt as e:
        report()
        finished = len({d["image"] for d in summary.done})
        again = "resume (finished inputs are skipped)" if image.is_dir() else "redo it"
        typer.echo(f"interrupted: {finished} of {len(plan.jobs)} inputs finished, no partial file left; run the same "
                   f"command again to {again}", err=True)
        raise typer.Exit(getattr(e, "code", 130))
    report()
    say(f"{summary.backend}{'' if ray is not None else f', load {summary.load_seconds:.2f}s'}")
    if summary.failures:  # one input: bad input (2); a folder: some inputs failed (1), however many were left to do
        if image.is_dir():
            typer.echo(f"error: {len(summary.failures)} of {len(plan.jobs)} inputs failed", err=True)
        raise typer.Exit(1 if image.is_dir() else 2)


def _requested_size(resize: str | None, width: int | None, height: int | None):
    from edgesd.errors import InvalidInputError

    if resize is None:
        return None if width is None and height is None else (width, height)
    if width is not None or height is not None:
        raise InvalidInputError("give --resize WxH or --width/--height, not both")
    try:
        w, h = (int(side) for side in resize.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"--resize takes WxH, e.g. 768x512, got {resize!r}") from None
    if not (8 <= w <= MAX_SIDE and 8 <= h <= MAX_SIDE):
        raise InvalidInputError(f"--resize {resize}: sides must be between 8 and {MAX_SIDE} pixels")
    return w, h


_NOT_FOUND = "not found with the same sha256 here, beside the image or beside the model folder: give"


def _warn_replay_differences(stored: dict, task: str, pipe, image: Path, mask: Path | None, replay: Path) -> None:
    """Say what differs from the run that made the replayed image (the output may then differ)."""
    from edgesd.image import image_sha256, load_image

    now = {**pipe.provenance, "task": task}
    if not image.is_dir():
        now["input_sha256"] = image_sha256(load_image(image, pipe.max_pixels))
    if mask is not None:
        now["mask_sha256"] = image_sha256(load_image(mask, pipe.max_pixels, keep_gray=True))
    names = {"task": "task", "manifest_sha256": "model", "backend": "backend", "inference_precision": "inference precision",
             "input_sha256": "input image", "mask_sha256": "mask", "edgesd_version": "edgesd version"}
    differs = [f"{label} ({stored[key][:12] if key.endswith('sha256') else stored[key]} -> "
               f"{now[key][:12] if key.endswith('sha256') else now[key]})"
               for key, label in names.items() if key in stored and key in now and stored[key] != now[key]]
    vaes = [source.get("vae") for source in (stored, now)]
    identities = [v and (v["manifest_sha256"], v["replaces"]) for v in vaes]
    if identities[0] != identities[1]:
        named = [f"{v['folder']} for {'+'.join(r.removeprefix('vae_') for r in v['replaces'])}" if v else "the model's" for v in vaes]
        differs.append(f"VAE ({named[0]} -> {named[1]}; {_NOT_FOUND} it with --vae)")
    controlnets = [[(c["folder"], c["manifest_sha256"]) for c in source.get("controlnets", [])] for source in (stored, now)]
    if controlnets[0] != controlnets[1]:
        listed = [", ".join(folder for folder, _ in entries) or "none" for entries in controlnets]
        differs.append(f"ControlNets ({listed[0]} -> {listed[1]}; give them with --controlnet FOLDER)")
    loras = [[(lora["file"], lora["sha256"], lora["weight"]) for lora in source.get("loras", [])] for source in (stored, now)]
    if loras[0] != loras[1]:
        listed = [", ".join(f"{file}:{weight:g}" for file, _, weight in entries) or "none" for entries in loras]
        differs.append(f"LoRAs ({listed[0]} -> {listed[1]}; {_NOT_FOUND} them with --lora FILE[:WEIGHT])")
    if differs:
        log.warning("warning: %s was made with another %s; the image will differ", replay, "; ".join(differs))


_task_command("img2img", "Transform IMAGE with PROMPT using the model folder MODEL.", _img2img_options)
_task_command("inpaint", "Repaint the white part of MASK in IMAGE with PROMPT (keeps the black part).", _inpaint_options)
_task_command("outpaint", "Extend IMAGE by --left/--right/--top/--bottom pixels, painting the new area with PROMPT.",
              _outpaint_options)


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


control_app = typer.Typer(no_args_is_help=True, help="Make a control map from an image, to look at before --control-image uses it.")
app.add_typer(control_app, name="control")


@control_app.command("canny")
def control_canny(
    image: Path = typer.Argument(..., help="The image to take the edges of.", show_default=False),
    output: Path = typer.Option(Path("control.png"), "--output", "-o", help="Where to write the edge map (.png, .jpg, .webp)."),
    low: int = typer.Option(100, min=0, max=10_000, help="Canny's lower hysteresis threshold (fainter edges below it are dropped)."),
    high: int = typer.Option(200, min=0, max=10_000, help="Canny's upper threshold (edges above it are always kept)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
):
    """The Canny edge map --control-image canny gives a canny ControlNet (white edges on black)."""
    from edgesd.control import canny
    from edgesd.outputs import save_image

    edges = run_guarded(canny, image, low, high)
    run_guarded(save_image, edges, output, {"control": "canny", "low": low, "high": high}, overwrite)
    typer.echo(f"wrote {output}", err=True)


@control_app.command("depth")
def control_depth(
    image: Path = typer.Argument(..., help="The image to estimate the depth of.", show_default=False),
    depth_model: Path = typer.Option(..., "--depth-model", metavar="FOLDER", help="A depth estimator folder (`edgesd export Intel/dpt-hybrid-midas -o FOLDER`).", show_default=False),
    output: Path = typer.Option(Path("depth.png"), "--output", "-o", help="Where to write the depth map (.png, .jpg, .webp)."),
    backend: str = typer.Option("auto", help="onnxruntime, openvino or auto."),
    device: str = typer.Option("auto", help="cpu, gpu (OpenVINO), cuda (onnxruntime-gpu), npu or auto."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
):
    """The depth map --control-image depth gives a depth ControlNet (near is bright), as transformers'
    depth-estimation pipeline makes it."""
    from edgesd.control import DepthEstimator
    from edgesd.outputs import save_image

    estimator = run_guarded(DepthEstimator.load, depth_model, backend, device)
    run_guarded(save_image, run_guarded(estimator, image), output, {"control": "depth", "depth_model": depth_model.name}, overwrite)
    typer.echo(f"wrote {output}", err=True)


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model folder (or VAE folder) to describe."),
    verify: bool = typer.Option(False, help="Re-hash every file and fail on a mismatch or a missing file."),
):
    """Show a model (VAE, ControlNet) folder's manifest: family, defaults, submodels, validation, provenance."""
    from edgesd.model_folder import open_any_folder
    from edgesd.sessions import BACKEND_OF_FORMAT

    folder = run_guarded(open_any_folder, model)
    m = folder.manifest
    component = m.get("kind") != "model"
    if m["kind"] == "vae":
        typer.echo(f"{folder.path}  (format {m['format_version']}, a VAE folder: give it as --vae to replace a model's VAE)")
        typer.echo(f"latents: {m['latent_channels']} channels, VAE scale factor {m['vae_scale_factor']}, "
                   f"scaling factor {m['vae_scaling_factor']}")
    elif m["kind"] == "depth":
        size = m["depth"]["size"]
        typer.echo(f"{folder.path}  (format {m['format_version']}, a depth estimator folder: give it as --depth-model with "
                   "--control-image depth, or to `edgesd control depth`)")
        typer.echo(f"reads images at {size['width']}x{size['height']}"
                   + (" (aspect kept)" if m["depth"]["keep_aspect_ratio"] else ""))
    elif m["kind"] == "controlnet":
        fits = m["controlnet"]
        typer.echo(f"{folder.path}  (format {m['format_version']}, a ControlNet folder for {m['family']} models: give it "
                   "as --controlnet with a --control-image)")
        typer.echo(f"fits UNets with blocks {fits['block_out_channels']}, cross-attention width {fits['cross_attention_dim']}, "
                   f"latents at 1/{fits['vae_scale_factor']}; control images {fits['conditioning_channel_order'].upper()}")
    else:
        typer.echo(f"{folder.path}  (format {m['format_version']}, family {m['family']}, {m['prediction_type']} prediction)")
        typer.echo(f"latents: {m['latent_channels']} channels, VAE scale factor {m['vae_scale_factor']}, "
                   f"scaling factor {m['vae_scaling_factor']}; sample size {m.get('sample_size') or folder.native_size}")
        typer.echo("defaults: " + ", ".join(f"{k}={v}" for k, v in folder.defaults.items()))
    column = max(14, *(len(name) + 2 for name in m["submodels"]))
    typer.echo(f"{'submodel':<{column}}{'format':<10}{'precision':<14}{'size':>11}  max |export - torch|  (quantized: vs fp32)")
    for name, entry in m["submodels"].items():
        for fmt, spec in entry["formats"].items():
            size = sum(f.get("bytes", 0) for f in spec.get("files", {}).values())
            backend = BACKEND_OF_FORMAT[fmt].name
            dev = entry.get("validation_max_abs_deviation", {}).get(backend)
            quantized = entry.get("quantized_max_abs_deviation", {}).get(backend)
            typer.echo(f"{name:<{column}}{fmt:<10}{spec.get('precision', '?'):<14}{size / 2**20:>7.1f} MiB  "
                       + ("-" if dev is None else f"{dev:.2e}")
                       + ("" if quantized is None else f"  ({quantized:.2e}; {spec.get('method', '')})"))
    prov = m.get("provenance", {})
    revision = f" (revision {prov['revision']})" if prov.get("revision") else ""
    created = f", created {prov['created']}" if prov.get("created") else ""
    typer.echo(f"source: {prov.get('source')}{revision}{created}")
    if not component:
        typer.echo("input sizes: any multiple of the VAE scale factor" if m.get("unet_any_size") else
                   f"input sizes: multiples of {m['vae_scale_factor'] * folder.unet_latent_multiple} px (fixed-2x UNet upsampling)")
        typer.echo("ControlNets: its UNet takes them (--controlnet)" if m.get("unet_controlnet_inputs") else
                   "ControlNets: not taken (exported by optimum or an older edgesd; re-export it with edgesd export)")
        if "onnx" in folder.formats():
            typer.echo("onnxruntime attention: fused (MultiHeadAttention)" if m.get("onnx_attention_fused") else
                       "onnxruntime attention: unfused, holds score matrices (re-export with edgesd >= 0.3 for less memory)")
    if verify:
        problems = folder.verify(hashes=True)
        if problems:
            fail(f"{folder.path} failed verification: {'; '.join(problems)}")
        listed = folder.listed_files()
        unhashed = [name for name, meta in listed.items() if "sha256" not in meta]
        if len(unhashed) == len(listed):  # optimum's folders: say what was and was not checked
            typer.echo("not verified: this folder's files have no hashes to check (not exported by edgesd); every file "
                       "is present and not empty, and a damaged one is named when an engine cannot read it")
        elif unhashed:
            typer.echo(f"verified {len(listed) - len(unhashed)} files by sha256; not {', '.join(unhashed)} "
                       "(no hash in the manifest: present and not empty only)")
        else:
            typer.echo(f"verified: every file matches its sha256 ({len(listed)} files)")


@app.command()
def serve(
    models: list[Path] = typer.Argument(..., help="Model folders to serve (loaded once, kept warm); the first is the default, POST /sdapi/v1/options switches.", show_default=False),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but localhost exposes the models: give --api-key."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port (7860, as AUTOMATIC1111's web UI, so its clients find it)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGESD_API_KEY", help="Requests must carry it (Authorization: Bearer KEY, X-API-Key, or as the basic-auth password).", show_default=False),
    queue: int = typer.Option(4, "--queue", min=1, max=1000, help="Jobs that may wait behind the running one; more get 429 with Retry-After."),
    backend: str = typer.Option("auto", help="onnxruntime, openvino or auto."),
    device: str = typer.Option("auto", help="cpu, gpu (OpenVINO), cuda (onnxruntime-gpu), npu or auto."),
    precision: str = typer.Option("auto", "--precision", help="Inference precision: auto, fp32, bf16, fp16."),
    threads: Optional[int] = typer.Option(None, min=1, max=MAX_THREADS, help="CPU threads for the engine (default: all cores).", show_default=False),
    low_memory: bool = typer.Option(False, help="Keep only the submodel in use loaded and tile the VAE for large images."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", metavar="FILE[:WEIGHT]", help=_LORA_HELP, show_default=False),
    vae: Optional[Path] = typer.Option(None, "--vae", metavar="FOLDER", help=_VAE_HELP, show_default=False),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help="Refuse images with more pixels than this."),
    max_request_mb: int = typer.Option(64, min=1, max=4096, help="Refuse request bodies over this many MiB."),
):
    """Serve img2img, inpainting and outpainting: a page at / (drop an image, prompt, variations side by side,
    paint a mask), AUTOMATIC1111's web UI API (/sdapi/v1/img2img, samplers, progress, interrupt) for clients
    such as webuiapi and editor plugins, and edgesd's own (/edgesd/v1/generate); OpenAPI docs at /docs.
    One job at a time; the others wait in a bounded queue."""
    from edgesd.serve import require_serve_extra, run

    run_guarded(require_serve_extra)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without --api-key: anyone who reaches this port can use the models", host)
    from edgesd.pipelines import Img2ImgPipeline
    from edgesd.serve.served import Served

    loras = [run_guarded(parse_lora, spec) for spec in lora or ()]
    pipes = {}
    for model in models:
        pipe = run_guarded(Img2ImgPipeline.load, model, backend=backend, device=device, inference_precision=precision,
                           threads=threads, low_memory=low_memory, loras=loras, vae=vae)
        pipe.max_pixels = max_pixels
        name = pipe.folder.name  # never a path: names are shown to every client
        pipes[name if name not in pipes else f"{name}-{len(pipes)}"] = pipe
    typer.echo(f"serving {', '.join(pipes)}: the page at http://{host}:{port}/ (AUTOMATIC1111's API under /sdapi/v1, "
               "edgesd's under /edgesd/v1; docs at /docs)", err=True)
    run(Served(pipes, max_pixels=max_pixels, max_body=max_request_mb * 2**20, api_key=api_key, queue_size=queue), host, port)


@app.command()
def bench(
    model: Path = typer.Argument(..., help="Model folder to benchmark."),
    backend: str = typer.Option("auto", help="onnxruntime, openvino or auto."),
    device: str = typer.Option("auto", help="cpu, gpu, cuda, npu or auto."),
    precision: str = typer.Option("auto", "--precision", help="Inference precision: auto, fp32, bf16, fp16."),
    resolution: Optional[int] = typer.Option(None, min=8, max=MAX_SIDE, help="Square input side in pixels. Default: the model's native size (512 for SD 1.5).", show_default=False),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps (default: the model's)."),
    strength: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Strength (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="Guidance scale (default: the model's)."),
    repeat: int = typer.Option(3, min=1, help="Timed warm runs."),
    warmup: int = typer.Option(1, min=0, help="Untimed runs after the cold start."),
    threads: Optional[int] = typer.Option(None, min=1, max=MAX_THREADS, help="CPU threads for the engine."),
    low_memory: bool = typer.Option(False, help="Measure the low-memory mode (one submodel loaded at a time, tiled VAE)."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", metavar="FILE[:WEIGHT]", help=_LORA_HELP, show_default=False),
    vae: Optional[Path] = typer.Option(None, "--vae", metavar="FOLDER", help=_VAE_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON on stdout (the summary goes to stderr)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the full result as JSON to this file.", show_default=False),
    overwrite: bool = typer.Option(False, help="Replace an existing --output file."),
):
    """Measure cold start, per-stage warm latency (median, min, max), peak memory and model size."""
    from edgesd.bench import run_benchmark

    global _json_errors
    _json_errors = as_json

    loras = [run_guarded(parse_lora, spec) for spec in lora or ()]
    if output:  # checked before the (long) run, as generating commands check their outputs
        run_guarded(_check_report, output, overwrite, [model, vae, *(l.path for l in loras)])
    result = run_guarded(run_benchmark, model, backend=backend, device=device, precision=precision, resolution=resolution,
                         steps=steps, strength=strength, guidance=guidance, repeat=repeat, warmup=warmup, threads=threads,
                         low_memory=low_memory, loras=loras, vae=vae)
    resolution, say = result["resolution"], partial(typer.echo, err=as_json)
    say(f"{result['model']} on {result['backend']}{' (low memory)' if low_memory else ''}, {resolution}x{resolution}, "
               f"{result['unet_steps']} UNet steps, precision {precision}"
               + "".join(f", LoRA {entry['file']}:{entry['weight']:g}" for entry in result["loras"])
               + (f", VAE {vae.name}" if vae else ""))
    say(f"cold start: load {result['cold_start']['load']:.2f}s, first run {result['cold_start']['first_run']:.2f}s")
    for stage, s in result["warm"].items():
        say(f"  {stage:<7} median {s['median'] * 1000:9.1f} ms   [{s['min'] * 1000:.1f} .. {s['max'] * 1000:.1f}]  n={s['n']}")
    say(f"peak memory {result['peak_rss_mib']:.0f} MiB, model folder {result['model_folder_mib']:.1f} MiB")
    if as_json:
        typer.echo(json.dumps(result))
    if output:
        from edgesd.outputs import write_text_atomic

        write_text_atomic(output, json.dumps(result, indent=2))


def _check_report(path: Path, overwrite: bool, sources: list) -> None:
    """A report file: not inside what is measured, not over an existing file unless asked, writable."""
    from edgesd.errors import InvalidInputError
    from edgesd.outputs import check_writable

    if path.is_dir():
        raise InvalidInputError(f"--output {path} is a folder; name the file to write")
    for source in filter(None, map(Path, filter(None, sources))):
        if source.exists() and (path.resolve() == source.resolve() or source.resolve() in path.resolve().parents):
            raise InvalidInputError(f"--output {path} is inside {source}, which the benchmark reads; write it elsewhere")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} already exists; pass --overwrite to replace it")
    check_writable(path.parent, path.name)


def _version() -> str:
    from edgesd import __version__

    return __version__


OPTIONAL_VALUES = {"--ray": "local"}  # an option given alone means this value (typer has no optional values)


def with_optional_values(args: list[str]) -> list[str]:
    """['--ray', '-q'] -> ['--ray', 'local', '-q']: an option of OPTIONAL_VALUES followed by no value gets its own."""
    out = []
    for k, arg in enumerate(args):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (k + 1 == len(args) or args[k + 1].startswith("-")) and "--" not in args[:k]:
            out.append(OPTIONAL_VALUES[arg])
    return out


def main() -> None:
    for entry in entry_points(group="edgesd.commands"):
        entry.load()(app)
    try:
        code = app(args=with_optional_values(sys.argv[1:]), standalone_mode=False)
    except getattr(click_errors, "NoArgsIsHelpError", ()) as e:
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        code = 0
    except click_errors.UsageError as e:  # option errors: one line, like every other error
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        code = 2
    except click_errors.ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        code = e.exit_code
    except typer.Abort:
        typer.echo("interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
