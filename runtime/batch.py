"""A batch: the jobs `jobs.plan_jobs` planned (one input, or a folder's), run through one warm
pipeline, here or on a Ray cluster.

Here, the jobs run one after another in this process. With `ray`, Ray Data (the engine this field
uses for batch inference) hands them to a pool of actors, each holding one pipeline opened from the
same `Batch`: each actor reads its own inputs and writes its own outputs (claimed and written
atomically, as a local run does), and only a summary of each job comes back to the driver. Both run
a job with `Runner.attempt`, so names, parameters and pixels are the same either way.

    summary = edgesd.batch.run("models/sd-turbo", "photos/", "styled/", "watercolor", seed=1, ray="auto")
"""

import json
import logging
import os
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from edgesd import memory
from edgesd.errors import EdgesdError, InvalidInputError
from edgesd.image import load_image, within_area
from edgesd.jobs import Job, files_of, plan_jobs
from edgesd.limits import MAX_PIXELS
from edgesd.outputs import claim, release, remove_stale, save_image
from edgesd.pipelines import Img2ImgPipeline, InpaintPipeline, LoadPlan, plan_load, resolve_settings
from edgesd.sessions import BACKENDS
from edgesd.variations import Variant, contact_sheet

log = logging.getLogger("edgesd")
PIPELINES = {"img2img": Img2ImgPipeline, "inpaint": InpaintPipeline, "outpaint": InpaintPipeline}
BASE_PROCESS_BYTES = 2**29  # an actor's own (Python, numpy, the engine's runtime): 0.15 GiB measured with tiny-sd1 loaded, with room
RAY_EXTRA = "pip install 'edgesd[ray]'"


@dataclass
class Batch:
    """What every job of a run gets; picklable, as each Ray actor opens its pipeline from it."""
    task: str  # img2img, inpaint or outpaint
    load: LoadPlan
    settings: dict  # the call's (a run's overrides go on top)
    runs: list[Variant] = field(default_factory=lambda: [Variant({}, "")])  # variations: one per output suffix
    iterations: int = 1  # > 1: one image chained, seed + 1 each pass
    size: tuple[int, int] | None = None  # asked for; None: job_size's rule
    keep_size: bool = False
    task_options: dict = field(default_factory=dict)  # inpaint: mask_image, padding_mask_crop...; outpaint: the sides
    open_options: dict = field(default_factory=dict)  # Pipeline.open's: device, inference_precision, threads, loras...
    refiner: LoadPlan | None = None
    high_noise_frac: float = 0.8
    control_images: list = field(default_factory=list)  # per ControlNet: an image, or a preprocessor's name (canny, depth)
    depth_model: Path | None = None
    max_pixels: int = MAX_PIXELS
    replay_index: int | None = None  # a replay regenerates the stored batch and keeps this image of it
    cli: bool = False  # failures in the command line's words (--resize) rather than the Python API's (size=)
    overwrite: bool = False
    grid: bool = False


@dataclass
class Summary:
    """What a run did, in the CLI's --json shape: per finished run its outputs, seed, settings, timings."""
    done: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    backend: str | None = None
    load_seconds: float = 0.0


class Runner:
    """A Batch's pipeline, opened once, running jobs."""

    def __init__(self, batch: Batch, threads: int | None = None):
        from edgesd.control import DepthEstimator, canny
        from edgesd.pipelines.img2img import refine

        self.batch = batch
        t0 = time.perf_counter()
        options = {**batch.open_options, **({"threads": threads} if threads else {})}
        self.pipe = PIPELINES[batch.task].open(batch.load, **options)
        self.pipe.max_pixels = batch.max_pixels
        self.derive = {"canny": partial(canny, max_pixels=batch.max_pixels)}  # control images made from each input
        device, precision = options.get("device", "auto"), options.get("inference_precision", "auto")
        if batch.depth_model is not None:
            estimator = DepthEstimator.load(batch.depth_model, batch.load.backend, device, precision)
            self.derive["depth"] = partial(estimator, max_pixels=batch.max_pixels)
        if batch.task == "outpaint":
            self.call = partial(self.pipe.outpaint, **batch.task_options)
        elif batch.refiner is not None:
            shared = {k: v for k, v in options.items() if k in ("device", "inference_precision", "threads", "low_memory")}
            refiner = Img2ImgPipeline.open(batch.refiner, **shared)
            self.call = partial(refine, self.pipe, refiner, high_noise_frac=batch.high_noise_frac)
        else:
            self.call = partial(self.pipe, **batch.task_options)
        self.load_seconds = time.perf_counter() - t0

    def run(self, job: Job, label: str = "denoising", progress=lambda label: nullcontext()) -> list[dict]:
        """One input: each run (a variation or an iteration) written, then its contact sheet. Returns
        per run its outputs, seed, settings and timings. `progress(label)`: a context giving a step callback."""
        batch, cells, done = self.batch, [], []
        source = load_image(job.image, batch.max_pixels)  # decoded once: sized here, run below
        schedule = batch.runs if batch.iterations == 1 else [batch.runs[0]] * batch.iterations
        given = source.size
        size = job_size(batch, given, self.pipe.folder.native_size)
        if batch.size is None and size not in (None, given):
            self.pipe.say_once("fit", "%s (%dx%d) is resized to %dx%d, about this model's native area (%d px square, "
                               "aspect kept); --keep-size keeps each input's size", job.image.name, *given, *size,
                               self.pipe.folder.native_size)
        controls = [self.derive[made](job.image) if isinstance(made, str) else made for made in batch.control_images]
        for k, (run, outputs) in enumerate(zip(schedule, job.outputs)):
            call = {**batch.settings, **run.overrides, **({"control_image": controls} if controls else {})}
            if batch.iterations > 1 and call["seed"] is not None:
                call["seed"] += k
            with progress(label) as callback:
                result = self.call(source, callback=callback, size=size, **call)
            indices = list(range(len(result.images))) if batch.replay_index is None else [batch.replay_index]
            for index, path in zip(indices, outputs):
                result.save(path, index, overwrite=batch.overwrite)
                name = run.label or (f"iteration {k + 1}" if batch.iterations > 1 else "")
                cells.append((result.images[index], ", ".join(filter(None, [name, f"image {index}" * (len(indices) > 1)]))))
            if batch.iterations > 1:
                source = result.images[0]
            done.append({"image": str(job.image), "outputs": [str(p) for p in outputs[: len(indices)]],
                         "seed": result.seed, "settings": result.parameters, "timings": result.timings})
        if batch.grid:
            save_image(contact_sheet(cells), job.grid, {"grid_of": [Path(p).name for d in done for p in d["outputs"]]},
                       batch.overwrite)
        return done

    def attempt(self, job: Job, label: str, progress=lambda label: nullcontext(), single: bool = False,
                reraise: bool = False) -> dict:
        """Run a job if this process can claim its outputs: {"done": [...]}, {"skipped": why} or
        {"failure": message}. `single`: the one output asked for by name (taken is an error, not a
        skip); `reraise`: a failure raises instead."""
        try:  # the claim is released however the job ends (a signal included)
            if why := _claim(job, self.batch.overwrite, self.batch.grid):
                if single:
                    raise InvalidInputError(f"{job.outputs[0][0]}: {why}; wait for it, or choose another -o")
                return {"image": str(job.image), "skipped": why}
            try:
                done = self.run(job, label, progress)
                return {"image": str(job.image), "done": done, **({"grid": str(job.grid)} if self.batch.grid else {})}
            except Exception as e:  # a batch goes on past any input's failure; the summary reports every one
                if reraise:
                    raise
                return {"image": str(job.image), "failure": _said(e, self.batch.cli)}
        finally:
            release(job.outputs[0][0])


def job_size(batch: Batch, size: tuple[int, int], native: int) -> tuple[int, int] | None:
    """The size a job asks its pipeline for, given its input's `size`: the batch's, if asked; else an
    input over the model's native area at that area, aspect kept (as edgesd serve and other tools do:
    time and memory grow with the pixels, and SD models repeat content far above their native size),
    unless `keep_size` or outpainting (its margins are in the input's pixels). inpaint otherwise keeps
    the input's size (the API, as diffusers, would use the native square)."""
    fitted = None if batch.keep_size or batch.task == "outpaint" else within_area(size, native**2)
    return batch.size or fitted or (size if batch.task == "inpaint" else None)


def _claim(job: Job, overwrite: bool, grid: bool) -> str | None:
    """Claim a job's outputs for this process; why not, if another process has them or has made them meanwhile."""
    if not claim(job.outputs[0][0]):
        return "another edgesd process is making its outputs"
    if not overwrite and any(p.exists() for p in files_of(job, grid)):
        release(job.outputs[0][0])
        return "its outputs were written meanwhile (by another edgesd process?)"
    return None


def describe(entry: dict) -> str:
    """One finished run, in a line."""
    steps = entry["timings"]["steps"]
    per_step = statistics.median(steps) if steps else 0.0
    return (f"wrote {', '.join(entry['outputs'])} (seed {entry['seed']}; {len(steps)} steps at {per_step:.3f}s, "
            f"total {entry['timings']['total']:.2f}s)")


def _record(summary: Summary, outcome: dict, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    if "done" in outcome:
        summary.done.extend(outcome["done"])
        for entry in outcome["done"]:
            say(describe(entry))
        if "grid" in outcome:
            say(f"wrote {outcome['grid']}")
    elif "skipped" in outcome:
        summary.skipped.append({"image": outcome["image"], "reason": outcome["skipped"]})
        say(f"skipped {outcome['image']}: {outcome['skipped']}")
    else:
        summary.failures.append({"image": outcome["image"], "error": outcome["failure"]})
        warn(f"failed {outcome['image']}: {outcome['failure']}")


def run_here(runner: Runner, jobs: list[Job], summary: Summary, single: bool = False, reraise: bool = False,
             progress=lambda label: nullcontext(), say=log.info, warn=log.warning) -> None:
    """The jobs one after another in this process, into `summary` (complete up to an interrupt)."""
    summary.backend, summary.load_seconds = runner.pipe.backend, runner.load_seconds
    try:
        for n, job in enumerate(jobs, 1):
            label = f"[{n}/{len(jobs)}] {job.image.name}" if len(jobs) > 1 else "denoising"
            _record(summary, runner.attempt(job, label, progress, single, reraise), say, warn)
    except KeyboardInterrupt:
        remove_stale(job.outputs[0][0].parent, ours=True)  # a claim or temporary the signal cut a cleanup of
        raise


def run_on_ray(batch: Batch, jobs: list[Job], summary: Summary, address: str = "local", workers: int | None = None,
               say=log.info, warn=log.warning, quiet: bool = False) -> None:
    """The jobs on a Ray cluster (`address`: "local" starts one on this machine for the run, "auto" or
    an address joins a running one; a Ray already initialised in this process is used as it is):
    `workers` actors (default one per node), each asking Ray for the CPUs and memory its pipeline
    needs and running its engine on those CPUs."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:  # Ray's own notices (token authentication, execution plans, its C++ core's) only with --debug
        level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "debug" if level == logging.DEBUG else "fatal")
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=not quiet,
                     logging_level=level)
        except ConnectionError as e:
            raise InvalidInputError(f"cannot join the Ray cluster at {address}: {e}; is it running (ray status)? If it "
                                    "uses token authentication, set RAY_AUTH_TOKEN as on its head node (ray get-auth-token)") from None
        logging.getLogger("ray.data").setLevel(level)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        workers = workers or len(nodes)
        total = int(ray.cluster_resources().get("CPU", 0))
        cpus = batch.open_options.get("threads") or max(1, total // workers)
        if workers * cpus > total:
            raise InvalidInputError(f"{workers} Ray workers of {cpus} CPUs need {workers * cpus} CPUs; the cluster has "
                                    f"{total}: use fewer --ray-workers or --threads")
        needed, largest = actor_bytes(batch), max(node["Resources"].get("memory", 0) for node in nodes)
        if needed > largest:
            raise InvalidInputError(f"a Ray worker for {batch.load.folder.name} needs about {needed / memory.GIB:.1f} GiB; "
                                    f"the largest node offers Ray {largest / memory.GIB:.1f} GiB: use --low-memory, a "
                                    "smaller --resize or a lighter precision, or nodes with more memory")
        ray.data.DataContext.get_current().enable_progress_bars = not quiet
        rows = ray.data.from_items([{"job": _encode(job), "n": n} for n, job in enumerate(jobs, 1)],
                                   override_num_blocks=len(jobs))  # a job per block: each finishes on its own
        outcomes = rows.map_batches(_Worker, batch_size=1, fn_constructor_args=(batch, cpus, len(jobs), os.getcwd()),
                                    num_cpus=cpus, memory=needed, **_pool(ray, workers))
        summary.backend = batch.load.backend
        try:
            for row in outcomes.iter_rows():
                _record(summary, json.loads(row["outcome"]), say, warn)
        except ray.exceptions.RayError as e:  # a worker could not start (its model, its memory) or died
            raise EdgesdError(f"the Ray run stopped: {_cause(e, batch.cli)}") from e
        order = {str(job.image): n for n, job in enumerate(jobs)}  # the local run's order, whatever finished first
        for entries in (summary.done, summary.failures):
            entries.sort(key=lambda entry: order.get(entry["image"], -1))
    finally:
        if started:
            ray.shutdown()
        remove_stale(jobs[0].outputs[0][0].parent)  # what workers stopped midway left (their processes are gone)


def _said(error: Exception, cli: bool) -> str:
    if isinstance(error, EdgesdError):
        return error.cli if cli else str(error)
    return f"{type(error).__name__}: {error}"


def _cause(error: BaseException, cli: bool) -> str:
    """The edgesd error behind Ray's wrappers (chained, or only in the text of a worker's traceback, as
    for an actor that failed to start), else Ray's first line."""
    seen = error
    while seen is not None:
        if isinstance(seen, EdgesdError):
            return _said(seen, cli)
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = str(error).strip()
    ours = re.findall(r"^edgesd\.errors\.\w+: (.+)$", text, re.MULTILINE)
    return ours[-1] if ours else text.splitlines()[0] if text else type(error).__name__


class _Worker:
    """A Ray actor: one warm pipeline, running the jobs Ray Data hands it."""

    def __init__(self, batch: Batch, cpus: int, total: int, cwd: str):
        if os.path.isdir(cwd):  # relative paths mean what they mean on the driver (shared storage at the same place)
            os.chdir(cwd)
        self.runner, self.total = Runner(batch, threads=cpus), total

    def __call__(self, rows: dict) -> dict:
        outcomes = []
        for text, n in zip(rows["job"], rows["n"]):
            job = _decode(text)
            outcomes.append(json.dumps(self.runner.attempt(job, f"[{n}/{self.total}] {job.image.name}")))
        return {"outcome": outcomes}


def _encode(job: Job) -> str:
    return json.dumps({"image": str(job.image), "outputs": [[str(p) for p in run] for run in job.outputs],
                       "grid": str(job.grid)})


def _decode(text: str) -> Job:
    job = json.loads(text)
    return Job(Path(job["image"]), [[Path(p) for p in run] for run in job["outputs"]], Path(job["grid"]))


def actor_bytes(batch: Batch) -> int:
    """The memory one actor asks Ray for: its weights and one call at the batch's size (the model's
    native size by default; a larger input is checked against what the node has when it runs)."""
    load, low_memory = batch.load, batch.open_options.get("low_memory", False)
    fmt = BACKENDS[load.backend].format
    folders = [load.folder, *load.controlnets, *([batch.refiner.folder] if batch.refiner else [])]
    weights = sum(memory.weights_bytes(folder, fmt, low_memory) for folder in folders)
    width, height = batch.size or (load.folder.native_size,) * 2  # what job_size gives large inputs (keep_size: checked as each runs)
    guidance = batch.settings.get("guidance_scale")
    guided = (load.folder.defaults["guidance_scale"] if guidance is None else guidance) > 1
    vae = None if batch.open_options.get("vae_decode_only") else load.vae
    return BASE_PROCESS_BYTES + weights + memory.call_bytes(load.folder, width, height, batch.settings.get("num_images") or 1,
                                                            guided, load.backend, low_memory, vae)


def _pool(ray, workers: int) -> dict:
    """A pool of `workers` actors, in the words of the installed Ray (2.51 moved `concurrency` to `compute`)."""
    from packaging.version import Version

    if Version(ray.__version__) >= Version("2.51"):
        return {"compute": ray.data.ActorPoolStrategy(size=workers)}
    return {"concurrency": workers}


def _import_ray():
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as e:
        if e.name != "ray":
            raise InvalidInputError(f"Ray is installed but does not import ({e}); {RAY_EXTRA} installs what it needs") from None
        raise InvalidInputError(f"running on Ray needs Ray: {RAY_EXTRA}") from None
    except ImportError as e:  # e.g. pyarrow >= 26 with numpy 1.x
        raise InvalidInputError(f"Ray is installed but does not import: {e}") from None
    return ray


def run(model: str | Path, inputs: str | Path, output: str | Path | None = None, prompt: str = "", *,
        task: str = "img2img", ray: str | None = None, ray_workers: int | None = None, size: tuple[int, int] | None = None,
        keep_size: bool = False,
        backend: str = "auto", device: str = "auto", inference_precision: str = "auto", threads: int | None = None,
        low_memory: bool = False, loras=(), vae: str | Path | None = None, overwrite: bool = False, **call) -> Summary:
    """`edgesd TASK MODEL -i INPUTS -o OUTPUT` from Python: one image or a folder (resumable: inputs
    whose outputs exist are skipped), here (`ray=None`) or on Ray ("local" starts a cluster on this
    machine, "auto" or an address joins one). Inputs over the model's native area run at that area
    (aspect kept) unless `size` is given or `keep_size`. `call`: the pipeline call's options (negative_prompt,
    strength, num_inference_steps, guidance_scale, seed, num_images, scheduler; inpaint's mask_image,
    padding_mask_crop, masked_content; outpaint's left, right, top, bottom, overlap)."""
    if task not in PIPELINES:
        raise InvalidInputError(f"task must be one of {', '.join(PIPELINES)}, got {task!r}")
    if ray_workers is not None and not (isinstance(ray_workers, int) and ray_workers >= 1):
        raise InvalidInputError(f"ray_workers must be a whole number >= 1, got {ray_workers!r}")
    own = {"inpaint": ("mask_image", "padding_mask_crop", "masked_content"),
           "outpaint": ("left", "right", "top", "bottom", "overlap")}.get(task, ())
    task_options = {name: call.pop(name) for name in own if name in call}
    load = plan_load(model, backend, device, vae)
    settings = {"prompt": prompt, **call}
    resolved = resolve_settings(load.folder, **settings, task_defaults=PIPELINES[task].task_defaults)[0]  # before any work
    mask = task_options.get("mask_image")
    plan = plan_jobs(Path(inputs), Path(output) if output is not None else None, resolved["num_images"], overwrite,
                     other_inputs=[Path(mask)] if isinstance(mask, (str, Path)) else [])
    batch = Batch(task, load, settings, size=size, keep_size=keep_size, task_options=task_options, overwrite=overwrite,
                  open_options={"device": device, "inference_precision": inference_precision, "threads": threads,
                                "low_memory": low_memory, "loras": loras})
    summary = Summary(skipped=[{"image": str(p), "reason": why} for p, why in plan.skipped])
    if plan.jobs and ray is None:
        run_here(Runner(batch), plan.jobs, summary)
    elif plan.jobs:
        run_on_ray(batch, plan.jobs, summary, ray, ray_workers)
    return summary
