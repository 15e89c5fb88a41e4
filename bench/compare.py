"""edgesd side by side with the systems users would pick instead: img2img latency and memory.

    python bench/compare.py DIFFUSERS_FOLDER EDGESD_FOLDER --resolution 256 --steps 20 --strength 0.5 \\
        --guidance 7.5 --repeat 3 --out bench/results/sd15-256.json

DIFFUSERS_FOLDER is the torch model (`save_pretrained` layout) and EDGESD_FOLDER its `edgesd
export --format both` (same weights: `random:NAME` exports draw the same weights as
`build_random_pipeline`). Every system runs the same img2img call: same picture, prompt, negative
prompt, seed, steps, strength, guidance and scheduler (the folder's), output to 8-bit pixels.

Systems (`--systems`, default: all but the *-fp32 variants of the others' defaults):

    edgesd-ort           edgesd on onnxruntime, fp32
    edgesd-ov-fp32       edgesd on OpenVINO, inference_precision fp32
    edgesd-ov-auto       edgesd on OpenVINO, inference_precision auto (bf16 on CPUs with AVX512-BF16/AMX)
    diffusers-torch      diffusers' StableDiffusionImg2ImgPipeline on torch CPU, fp32 (DIFFUSERS_FOLDER)
    optimum-ort          optimum's ORTStableDiffusionImg2ImgPipeline (optimum.onnxruntime) on EDGESD_FOLDER
    optimum-intel        optimum-intel's OVStableDiffusionImg2ImgPipeline on EDGESD_FOLDER, its defaults
    openvino-genai       openvino_genai.Image2ImagePipeline on EDGESD_FOLDER's IR, its defaults
    optimum-intel-fp32   (opt-in) the same with INFERENCE_PRECISION_HINT f32
    openvino-genai-fp32  (opt-in) the same with INFERENCE_PRECISION_HINT f32
    edgesd-ov-tiny-vae   (opt-in) edgesd-ov-auto with a tiny VAE (--tiny-vae FOLDER) in place of the model's,
                         on EDGESD_FOLDER or on --tiny-vae-model (e.g. its `--target cpu` export, the
                         others staying on EDGESD_FOLDER's IR)

How it is measured. One invocation runs `--repeat` rounds; in each round every system runs once,
in an order rotated by one place per round, so slow drift on a shared machine hits all systems
alike. By default (`--isolation process`) each system's turn is a fresh subprocess: load (timed),
`--warmup` untimed calls (the first is timed as the cold first run; import + load + it is the time to
the first image, what a one-image CLI run waits for), then `--runs` timed calls; the
subprocess's peak resident memory (VmHWM) is its system's peak: whole-life (load included), and
during the timed calls alone (the counter is reset before them). Full-size models cannot all be
resident at once on a 24 GB machine, so this is also the only way to alternate them; the cost is a
load per system per round. `--isolation inline` loads every system once into this process and
alternates calls there (less loading, but no per-system memory; for big machines and quick checks).

Per call it records the total time and the time inside each submodel (text encoder, VAE encoder,
every UNet call, VAE decoder; `other` = total minus those: tokenizer, scheduler, pre/post-
processing, framework overhead). The UNet's FLOPs per call (bench/flops.py, from the exported ONNX
graph) turn UNet call time into achieved GFLOP/s against this CPU's peak. Every system's output is
compared with diffusers' (same seed) to show they did the same work.

A system whose package is not installed is recorded as unavailable, one that fails as failed, each
with the reason; the run goes on. The JSON holds settings, machine, package versions, per-system
raw runs and medians, ratios to edgesd (the headline: edgesd time / other time, < 1 means edgesd is
faster) and the issue's targets. bench/report.py renders it.

openvino_genai needs the tokenizer as OpenVINO models and reads the pipeline class from
model_index.json; it is given a prepared copy of EDGESD_FOLDER in the work directory (the
submodels symlinked, tokenizer converted with openvino_tokenizers, `_class_name`
StableDiffusionPipeline) and, where the UNet's timestep input is not the int64 [1] it feeds, a UNet
IR with that input adapted (int64 [1] -> the model's scalar; the rest of the graph unchanged).
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = "edgesd-bench-compare/1"
STAGES = ("text", "encode", "unet", "controlnet", "decode", "other")

# key -> description. "needs": modules that must import; "folder": which folder it reads.
SYSTEMS = {
    "edgesd-ort": dict(label="edgesd, onnxruntime fp32", project="edgesd", engine="onnxruntime", precision="fp32",
                       needs=["edgesd", "onnxruntime"], folder="edgesd", format="onnx"),
    "edgesd-ov-fp32": dict(label="edgesd, OpenVINO fp32", project="edgesd", engine="openvino", precision="fp32",
                           needs=["edgesd", "openvino"], folder="edgesd", format="openvino"),
    "edgesd-ov-auto": dict(label="edgesd, OpenVINO auto", project="edgesd", engine="openvino", precision="auto",
                           needs=["edgesd", "openvino"], folder="edgesd", format="openvino"),
    "diffusers-torch": dict(label="diffusers, torch CPU fp32", project="diffusers", engine="torch", precision="fp32",
                            needs=["torch", "diffusers", "transformers"], folder="diffusers"),
    "optimum-ort": dict(label="optimum, onnxruntime fp32", project="optimum-onnx", engine="onnxruntime",
                        precision="fp32", needs=["torch", "optimum.onnxruntime"], folder="edgesd", format="onnx"),
    "optimum-intel": dict(label="optimum-intel, OpenVINO default", project="optimum-intel", engine="openvino",
                          precision="auto", needs=["torch", "optimum.intel", "openvino"], folder="edgesd",
                          format="openvino"),
    "openvino-genai": dict(label="openvino_genai, default", project="openvino-genai", engine="openvino",
                           precision="auto", needs=["openvino_genai", "openvino"], folder="genai", format="openvino"),
    "optimum-intel-fp32": dict(label="optimum-intel, OpenVINO fp32", project="optimum-intel", engine="openvino",
                               precision="fp32", needs=["torch", "optimum.intel", "openvino"], folder="edgesd",
                               format="openvino", optional=True),
    "openvino-genai-fp32": dict(label="openvino_genai, fp32", project="openvino-genai", engine="openvino",
                                precision="fp32", needs=["openvino_genai", "openvino"], folder="genai",
                                format="openvino", optional=True),
    "edgesd-ov-tiny-vae": dict(label="edgesd, OpenVINO auto, tiny VAE", project="edgesd", engine="openvino",
                               precision="auto", needs=["edgesd", "openvino"], folder="edgesd", format="openvino",
                               optional=True, tiny_vae=True),
}
DEFAULT_SYSTEMS = [k for k, v in SYSTEMS.items() if not v.get("optional")]
# Headline pairs: each other system against the edgesd configuration doing the same work at the same precision.
COUNTERPARTS = {
    "diffusers-torch": ["edgesd-ort", "edgesd-ov-fp32"],
    "optimum-ort": ["edgesd-ort"],
    "optimum-intel": ["edgesd-ov-auto"],
    "openvino-genai": ["edgesd-ov-auto"],
    "optimum-intel-fp32": ["edgesd-ov-fp32"],
    "openvino-genai-fp32": ["edgesd-ov-fp32"],
}
# The targets: (edgesd system, other system, quantity, bound) with quantity edgesd/other; a bound
# per model family where the SDXL issue (21) asks for another than SD's (None: any other family).
TARGETS = [
    ("edgesd-ov-auto", "openvino-genai", "time", 1.0),
    ("edgesd-ov-auto", "openvino-genai", "peak_rss", {"sdxl": 0.6, None: 0.7}),
    ("edgesd-ov-tiny-vae", "openvino-genai", "time", {"sdxl": 0.3, None: 0.5}),  # issue 15: the fastest sound configuration
    ("edgesd-ov-auto", "openvino-genai", "first_image", 1.0),  # issue 15: import + load + first call, the CLI's wait
    ("edgesd-ort", "optimum-ort", "time", 1.0),
    ("edgesd-ort", "diffusers-torch", "time", 0.5),
    ("edgesd-ov-fp32", "diffusers-torch", "time", 0.5),
]
# With --controlnet (issue 22): edgesd on OpenVINO against diffusers' ControlNet img2img pipeline.
CONTROLNET_TARGETS = [
    ("edgesd-ov-auto", "diffusers-torch", "time", 0.5),
    ("edgesd-ov-auto", "diffusers-torch", "peak_rss", 0.7),
]
PACKAGES = ["edgesd", "numpy", "pillow", "onnxruntime", "onnx", "openvino", "openvino-genai", "openvino-tokenizers",
            "torch", "diffusers", "transformers", "optimum", "optimum-onnx", "optimum-intel", "tokenizers"]


# =============================================================================================
# Shared helpers


def bench_image(resolution: int):
    """The same deterministic picture `edgesd bench` uses (content does not change the cost)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:resolution, 0:resolution]
    rgb = np.stack([x * 255 // resolution, y * 255 // resolution, (x ^ y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def bench_mask(resolution: int):
    """The inpainting mask every system gets: the centre half of the picture repainted."""
    from PIL import Image

    mask = Image.new("L", (resolution, resolution))
    mask.paste(255, (resolution // 4, resolution // 4, 3 * resolution // 4, 3 * resolution // 4))
    return mask


def _inpainting(spec: dict) -> bool:
    return spec.get("task") == "inpaint"


def _sdxl(spec: dict) -> bool:
    return spec.get("family") == "sdxl"


def _pipeline_class(module, spec: dict, prefix: str = ""):
    """The library's img2img or inpainting pipeline class for the model's family (SD or SDXL), its
    ControlNet one with --controlnet."""
    family = "StableDiffusionXL" if _sdxl(spec) else "StableDiffusion"
    return getattr(module, f"{prefix}{family}{'ControlNet' if spec.get('controlnet') else ''}"
                           f"{'Inpaint' if _inpainting(spec) else 'Img2Img'}Pipeline")


def bench_control(resolution: int):
    """The control map every system gets with --controlnet: the Canny edges of the bench image."""
    from edgesd.control import canny

    return canny(bench_image(resolution))


TEXT_STAGES = (("text_encoder", "text"), ("text_encoder_2", "text"))  # SDXL's second encoder counts as text too


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float | None:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the lifetime peak is all there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def edgesd_commit() -> str | None:
    """The checkout's commit (with -dirty for uncommitted changes): which edgesd a result measured."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _flops_module():
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import flops

    return flops


def machine() -> dict:
    cpu_peak = _flops_module().cpu_peak

    info = {"platform": platform.platform(), "machine": platform.machine(), **cpu_peak()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gib"] = int(mem) / 2**20
    except (OSError, IndexError, ValueError):
        pass
    return info


def _type_name(value) -> str:
    """An OpenVINO element type as its short name (bf16, f32)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    text = " | ".join(lines[:1] + lines[-2:]) if len(lines) > 3 else " | ".join(lines)
    return text[:700]


class StageTimer:
    """Seconds spent inside each submodel during one call."""

    def __init__(self):
        self.calls = {}

    def reset(self):
        self.calls = {}

    def add(self, stage: str, seconds: float):
        self.calls.setdefault(stage, []).append(seconds)

    def wrap(self, obj, method: str, stage: str):
        """Time obj.method (an instance attribute shadows the class's method; `obj(...)` that
        dispatches to self.forward, and pipelines calling obj.encode/decode, go through it)."""
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - t0)

        object.__setattr__(obj, method, timed)

    def stages(self, total: float) -> dict:
        out = {stage: sum(self.calls.get(stage, [])) for stage in STAGES[:-1]}
        out["other"] = total - sum(out.values())
        return out


# =============================================================================================
# The systems: load(spec, timer) -> (run() -> uint8 HxWx3 array, info dict)


def _call_args(spec: dict) -> dict:
    return dict(prompt=spec["prompt"], negative_prompt=spec["negative_prompt"], strength=spec["strength"],
                num_inference_steps=spec["steps"], guidance_scale=spec["guidance"])


def load_edgesd(key: str, spec: dict, timer: StageTimer):
    import numpy as np

    from edgesd import Img2ImgPipeline, InpaintPipeline

    system = SYSTEMS[key]
    backend = system["engine"]
    precision = system["precision"]
    pipeline = InpaintPipeline if _inpainting(spec) else Img2ImgPipeline
    vae = None
    if system.get("tiny_vae"):
        vae = spec.get("tiny_vae") or _raise("needs a tiny VAE folder: --tiny-vae FOLDER (edgesd export madebyollin/taesd)")
    controlnet = spec.get("controlnet") and spec["controlnet"]["edgesd"]
    folder = (system.get("tiny_vae") and spec.get("tiny_vae_model")) or spec["edgesd"]
    pipe = pipeline.load(folder, backend=backend, device="cpu", inference_precision=precision, vae=vae,
                         controlnet=controlnet)
    pipe.reuse_encodings = False  # every call pays for its own encodings, as the other systems do

    class TimedSession:
        def __init__(self, session, stage):
            self._session, self._stage = session, stage

        def __getattr__(self, name):
            return getattr(self._session, name)

        def run(self, feeds):
            t0 = time.perf_counter()
            try:
                return self._session.run(feeds)
            finally:
                timer.add(self._stage, time.perf_counter() - t0)

    stage_of = {**dict(TEXT_STAGES), "vae_encoder": "encode", "unet": "unet", "vae_decoder": "decode", "controlnet_0": "controlnet"}
    pipe.wrap_sessions(lambda name, session: TimedSession(session, stage_of.get(name, name)))
    image = bench_image(spec["resolution"])
    args = _call_args(spec)

    masks = [bench_mask(spec["resolution"])] if _inpainting(spec) else []
    control = {"control_image": bench_control(spec["resolution"])} if controlnet else {}

    def run():
        result = pipe(image, *masks, args["prompt"], negative_prompt=args["negative_prompt"], strength=args["strength"],
                      num_inference_steps=args["num_inference_steps"], guidance_scale=args["guidance_scale"],
                      seed=spec["seed"], **control)
        return np.asarray(result.images[0])

    def info():
        return {"backend": pipe.backend, "effective_precision": pipe.provenance["inference_precision"], "model": folder}

    return run, info


def _raise(message: str):
    raise RuntimeError(message)


def load_diffusers(key: str, spec: dict, timer: StageTimer):
    import diffusers
    import numpy as np
    import torch

    extra = {} if _sdxl(spec) else dict(safety_checker=None, requires_safety_checker=False)
    if spec.get("controlnet"):
        extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(spec["controlnet"]["diffusers"], torch_dtype=torch.float32)
    pipe = _pipeline_class(diffusers, spec).from_pretrained(spec["diffusers"], torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    for part, stage in TEXT_STAGES:
        if getattr(pipe, part, None) is not None:
            timer.wrap(getattr(pipe, part), "forward", stage)
    timer.wrap(pipe.unet, "forward", "unet")
    timer.wrap(pipe.vae, "encode", "encode")
    timer.wrap(pipe.vae, "decode", "decode")
    if spec.get("controlnet"):
        timer.wrap(pipe.controlnet, "forward", "controlnet")
    image = bench_image(spec["resolution"])
    extra = {**_inpaint_args(spec), **({"control_image": bench_control(spec["resolution"])} if spec.get("controlnet") else {})}

    def run():
        generator = torch.Generator("cpu").manual_seed(spec["seed"])
        return np.asarray(pipe(image=image, generator=generator, **_call_args(spec), **extra).images[0])

    return run, lambda: {"torch_threads": torch.get_num_threads()}


def _inpaint_args(spec: dict) -> dict:
    """The mask, and the size (diffusers' inpainting pipelines default to the native square otherwise)."""
    side = spec["resolution"]
    return dict(mask_image=bench_mask(side), height=side, width=side) if _inpainting(spec) else {}


def _optimum_runner(pipe, spec: dict, timer: StageTimer):
    """A timed img2img call of an optimum (onnxruntime or OpenVINO) pipeline, per-submodel stages wrapped."""
    import numpy as np
    import torch

    pipe.set_progress_bar_config(disable=True)
    for part, stage in (*TEXT_STAGES, ("unet", "unet"), ("vae_encoder", "encode"), ("vae_decoder", "decode")):
        if getattr(pipe, part, None) is not None:
            timer.wrap(getattr(pipe, part), "forward", stage)
    image = bench_image(spec["resolution"])
    extra = _inpaint_args(spec)

    def run():
        generator = torch.Generator("cpu").manual_seed(spec["seed"])
        return np.asarray(pipe(image=image, generator=generator, **_call_args(spec), **extra).images[0])

    return run


def load_optimum_ort(key: str, spec: dict, timer: StageTimer):
    import optimum.onnxruntime

    pipe = _pipeline_class(optimum.onnxruntime, spec, "ORT").from_pretrained(spec["plain"], provider="CPUExecutionProvider")
    return _optimum_runner(pipe, spec, timer), lambda: {"use_io_binding": getattr(pipe.unet, "use_io_binding", None)}


def load_optimum_intel(key: str, spec: dict, timer: StageTimer):
    import optimum.intel

    ov_config = {"INFERENCE_PRECISION_HINT": "f32"} if SYSTEMS[key]["precision"] == "fp32" else None
    kwargs = {"ov_config": ov_config} if ov_config else {}
    pipe = _pipeline_class(optimum.intel, spec, "OV").from_pretrained(spec["plain"], device="CPU", **kwargs)
    run = _optimum_runner(pipe, spec, timer)

    def info():
        out = {"dynamic_shapes": getattr(pipe, "is_dynamic", None), "ov_config": dict(pipe.ov_config)}
        try:
            out["effective_precision"] = _type_name(pipe.unet.request.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:
            pass
        return out

    return run, info


def load_genai(key: str, spec: dict, timer: StageTimer):
    import numpy as np
    import openvino as ov
    import openvino_genai

    if spec.get("genai") is None:
        raise RuntimeError(spec.get("genai_reason") or "no prepared model folder for openvino_genai")
    props = {"INFERENCE_PRECISION_HINT": "f32"} if SYSTEMS[key]["precision"] == "fp32" else {}
    pipeline = openvino_genai.InpaintingPipeline if _inpainting(spec) else openvino_genai.Image2ImagePipeline
    pipe = pipeline(spec["genai"], "CPU", **props)
    image = ov.Tensor(np.asarray(bench_image(spec["resolution"]))[None])
    masks = [ov.Tensor(np.asarray(bench_mask(spec["resolution"]).convert("RGB"))[None])] if _inpainting(spec) else []
    args = _call_args(spec)
    kwargs = dict(strength=args["strength"], num_inference_steps=args["num_inference_steps"],
                  guidance_scale=args["guidance_scale"])
    if args["negative_prompt"] is not None:
        kwargs["negative_prompt"] = args["negative_prompt"]
    if _inpainting(spec):  # its inpainting pipeline otherwise works at the model's native size
        kwargs.update(height=spec["resolution"], width=spec["resolution"])

    def run():
        out = pipe.generate(args["prompt"], image, *masks, generator=openvino_genai.TorchGenerator(spec["seed"]), **kwargs)
        return np.array(out.data[0])

    def collect():
        """After the clock stops: openvino_genai times its own submodel calls (text encoder and VAE in
        ms, each UNet call in us); no wrapper can reach inside its C++ loop."""
        m = pipe.get_performance_metrics()
        text = m.get_text_encoder_infer_duration()
        timer.add("text", sum(text.values()) / 1e3 if isinstance(text, dict) else float(text) / 1e3)
        timer.add("encode", m.get_vae_encoder_infer_duration() / 1e3)
        for us in m.raw_metrics.unet_inference_durations:
            timer.add("unet", float(us) / 1e6)
        timer.add("decode", m.get_vae_decoder_infer_duration() / 1e3)

    run.collect = collect
    def info():
        out = {"properties": props, "adapted": spec.get("genai_adapted", [])}
        # its default is the CPU plugin's
        hint = props.get("INFERENCE_PRECISION_HINT") or ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        out["effective_precision"] = _type_name(hint)
        return out

    return run, info


LOADERS = {"edgesd": load_edgesd, "diffusers": load_diffusers, "optimum-onnx": load_optimum_ort,
           "optimum-intel": load_optimum_intel, "openvino-genai": load_genai}


def load_system(key: str, spec: dict, timer: StageTimer):
    if spec.get("controlnet") and SYSTEMS[key]["project"] not in ("edgesd", "diffusers"):
        _raise(f"{SYSTEMS[key]['project']} has no ControlNet")
    return LOADERS[SYSTEMS[key]["project"]](key, spec, timer)


def measure(run, timer: StageTimer) -> tuple[dict, "object"]:
    timer.reset()
    t0 = time.perf_counter()
    pixels = run()
    total = time.perf_counter() - t0
    if hasattr(run, "collect"):
        run.collect()
    unet_calls = list(timer.calls.get("unet", []))
    return {"total": total, "stages": timer.stages(total), "unet_calls": unet_calls}, pixels


class Unavailable(Exception):
    """The system's package is not installed here."""


def _import_check(key: str):
    import importlib

    for module in SYSTEMS[key]["needs"]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise Unavailable(f"{module} is not installed ({e.__class__.__name__}: {e})") from None


# =============================================================================================
# Worker: one system's turn, in its own process


def worker(key: str, spec: dict, runs: int, warmup: int, output: str | None) -> dict:
    import numpy as np

    result = {"system": key, "pid": os.getpid()}
    t0 = time.perf_counter()
    try:
        _import_check(key)
    except Unavailable as e:
        return {**result, "status": "unavailable", "reason": str(e)}
    result["import_s"] = time.perf_counter() - t0
    timer = StageTimer()
    t0 = time.perf_counter()
    run, info = load_system(key, spec, timer)
    result["load_s"] = time.perf_counter() - t0
    result["rss_after_load_mib"] = rss_mib()
    pixels = None
    for i in range(warmup):
        row, pixels = measure(run, timer)
        if i == 0:
            result["first_run_s"] = row["total"]
    result["peak_rss_load_and_warmup_mib"] = peak_rss_mib()
    result["run_peak_reset"] = reset_peak_rss()
    rows = []
    for _ in range(runs):
        row, pixels = measure(run, timer)
        rows.append(row)
    result["runs"] = rows
    result["peak_rss_mib"] = max(filter(None, [result["peak_rss_load_and_warmup_mib"], peak_rss_mib()]), default=None)
    result["run_peak_rss_mib"] = peak_rss_mib() if result["run_peak_reset"] else None
    try:
        result["info"] = info()
    except Exception as e:  # informative only
        result["info"] = {"error": _short_reason(e)}
    if output and pixels is not None:
        np.save(output, pixels)
    result["status"] = "ok"
    return result


def worker_main(args):
    spec = json.loads(Path(args.spec).read_text())
    try:
        result = worker(args.worker, spec, args.runs, args.warmup, args.save_output)
    except BaseException as e:  # reported to the parent, which goes on with the others
        traceback.print_exc()
        result = {"system": args.worker, "status": "failed", "reason": _short_reason(e)}
    Path(args.result).write_text(json.dumps(result))


# =============================================================================================
# Preparing the other systems' folders


def prepare_plain(edgesd: Path, dest: Path) -> list[str]:
    """The folder as the other systems read it: a UNet edgesd exported takes ControlNet residual inputs,
    which optimum and openvino_genai do not feed; here each becomes the (1, 1, 1, 1) zero edgesd feeds
    without a ControlNet (the same graph, the same work). Everything else is linked, not copied."""
    import numpy as np
    import onnx
    import openvino as ov
    from onnx import numpy_helper

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in edgesd.iterdir():
        if item.name != "unet":
            os.symlink(item.resolve(), dest / item.name)
    (dest / "unet").mkdir()
    for item in (edgesd / "unet").iterdir():
        if item.name not in ("model.onnx", "openvino_model.xml", "openvino_model.bin"):
            os.symlink(item.resolve(), dest / "unet" / item.name)  # the ONNX external data stays where it is
    zero = np.zeros((1, 1, 1, 1), np.float32)
    if (edgesd / "unet" / "model.onnx").is_file():
        model = onnx.load(str(edgesd / "unet" / "model.onnx"), load_external_data=False)
        residuals = [i for i in model.graph.input if "_residual" in i.name]
        for i in residuals:
            model.graph.input.remove(i)
            model.graph.initializer.append(numpy_helper.from_array(zero, i.name))
        onnx.save(model, str(dest / "unet" / "model.onnx"))
    if (edgesd / "unet" / "openvino_model.xml").is_file():
        import openvino.opset13 as ops

        model = ov.Core().read_model(str(edgesd / "unet" / "openvino_model.xml"))
        for param in [p for p in model.get_parameters() if any("_residual" in n for n in p.output(0).get_names())]:
            param.output(0).replace(ops.constant(zero).output(0))
            model.remove_parameter(param)
        model.validate_nodes_and_infer_types()
        ov.save_model(model, str(dest / "unet" / "openvino_model.xml"), compress_to_fp16=False)
    return ["UNet ControlNet residual inputs bound to zero constants (edgesd feeds zeros without a ControlNet)"]


def prepare_genai(edgesd: Path, dest: Path) -> list[str]:
    """A copy of the folder openvino_genai can read; returns what had to be adapted."""
    import openvino as ov

    adapted = []
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    tokenizers = [name for name in ("tokenizer", "tokenizer_2") if (edgesd / name).is_dir()]  # SDXL: two
    for item in edgesd.iterdir():
        if item.name not in (*tokenizers, "unet", "model_index.json"):
            os.symlink(item.resolve(), dest / item.name)
    for name in tokenizers:
        shutil.copytree(edgesd / name, dest / name)
        if not (dest / name / "openvino_tokenizer.xml").is_file():
            from openvino_tokenizers import convert_tokenizer
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(edgesd / name))
            ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
            ov.save_model(ov_tokenizer, str(dest / name / "openvino_tokenizer.xml"))
            ov.save_model(ov_detokenizer, str(dest / name / "openvino_detokenizer.xml"))
            adapted.append(f"{name} converted with openvino_tokenizers.convert_tokenizer")
    index = json.loads((edgesd / "model_index.json").read_text())
    name = index.get("_class_name", "")
    inpainting = json.loads((edgesd / "unet" / "config.json").read_text()).get("in_channels") == 9
    family = "StableDiffusionXL" if name.startswith("StableDiffusionXL") else "StableDiffusion"
    wanted = f"{family}InpaintPipeline" if inpainting else f"{family}Pipeline"
    if wanted != name:  # openvino_genai picks its implementation by the class name (text-to-image's, or inpainting's)
        index["_class_name"] = wanted
        adapted.append(f"model_index.json _class_name {name} -> {wanted}")
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))

    unet_src = edgesd / "unet"
    core = ov.Core()
    model = core.read_model(str(unet_src / "openvino_model.xml"))
    index_of = {i: p for i, p in enumerate(model.get_parameters()) if "timestep" in p.output(0).get_names()}
    needs_adapting = False
    for i, param in index_of.items():
        shape = param.get_partial_shape()
        if param.get_element_type() != ov.Type.i64 or shape.rank.is_static and shape.rank.get_length() == 0:
            needs_adapting = True
    if not needs_adapting:
        os.symlink(unet_src.resolve(), dest / "unet")
        return adapted
    import openvino.opset13 as ops

    (dest / "unet").mkdir()
    for item in unet_src.iterdir():
        if not item.name.startswith("openvino_model") and item.suffix != ".onnx" and not item.name.endswith("_data"):
            os.symlink(item.resolve(), dest / "unet" / item.name)
    for i, old in index_of.items():
        was = f"{old.get_element_type().get_type_name()} {old.get_partial_shape()}"
        new = ops.parameter([1], ov.Type.i64, name="timestep")
        value = ops.convert(new, old.get_element_type())
        if old.get_partial_shape().rank.is_static and old.get_partial_shape().rank.get_length() == 0:
            value = ops.squeeze(value, ops.constant([0], ov.Type.i64))
        for target in list(old.output(0).get_target_inputs()):
            target.replace_source_output(value.output(0))
        old.output(0).set_names(set())
        new.output(0).set_names({"timestep"})
        model.replace_parameter(i, new)
        adapted.append(f"UNet timestep input {was} -> i64 [1] (openvino_genai feeds int64 [1]; the IR is re-saved "
                       "in the work directory with a Convert/Squeeze in front, weights unchanged)")
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(dest / "unet" / "openvino_model.xml"), compress_to_fp16=False)
    return adapted


def prepare_main(args):
    try:
        prepare = prepare_plain if args.prepare_plain else prepare_genai
        adapted = prepare(Path(args.edgesd_folder), Path(args.prepare_plain or args.prepare_genai))
        result = {"status": "ok", "adapted": adapted}
    except BaseException as e:
        traceback.print_exc()
        result = {"status": "failed", "reason": _short_reason(e)}
    Path(args.result).write_text(json.dumps(result))


# =============================================================================================
# The parent: rounds, summaries, ratios


def _run_child(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, str]:
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return rc, " | ".join(tail)[-500:]


def environment() -> dict:
    """Where a result was measured, for every bench script's JSON: the machine, package versions, commit."""
    return {"machine": machine(), "versions": versions(), "edgesd_commit": edgesd_commit()}


def alternate(cases: dict[str, list[str]], rounds: int) -> dict[str, list[dict]]:
    """Run each case's command line in a fresh process, all cases once per round, in order: {case:
    [the JSON each printed last, per round]} (bench/lora.py, bench/ort_attention.py)."""
    results = {}
    for round_ in range(rounds):
        for case, command in cases.items():
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            measured = json.loads(done.stdout.splitlines()[-1])
            print(f"round {round_ + 1} {case:<24} {json.dumps(measured)}", flush=True)
            results.setdefault(case, []).append(measured)
    return results


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(entry: dict, flops: dict | None, peak: float | None) -> dict:
    runs = entry.get("runs", [])
    if not runs:
        return {}
    totals = [r["total"] for r in runs]
    unet_all = [c for r in runs for c in r["unet_calls"]]
    out = {
        "total": {"median": statistics.median(totals), "min": min(totals), "max": max(totals), "n": len(totals)},
        "stages": {s: statistics.median(r["stages"].get(s, 0.0) for r in runs) for s in STAGES},
        "unet_calls_per_run": statistics.median(len(r["unet_calls"]) for r in runs),
        "unet_call": ({"median": statistics.median(unet_all), "min": min(unet_all), "max": max(unet_all),
                       "n": len(unet_all)} if unet_all else None),
    }
    if out["stages"]["controlnet"] and out["stages"]["unet"]:  # issue 22: a ControlNet's cost per step, as the UNet's share
        out["controlnet_per_unet"] = out["stages"]["controlnet"] / out["stages"]["unet"]
    turns = entry.get("turns", [])
    for field in ("load_s", "first_run_s", "import_s"):
        out[field] = _median(t.get(field) for t in turns)
    # what a user of a one-image CLI waits for, per fresh process
    out["first_image_s"] = _median(t["import_s"] + t["load_s"] + t["first_run_s"] for t in turns
                                   if all(t.get(f) is not None for f in ("import_s", "load_s", "first_run_s")))
    for field in ("peak_rss_mib", "run_peak_rss_mib", "rss_after_load_mib"):
        values = [t.get(field) for t in turns if t.get(field) is not None]
        out[field] = max(values) if values else None
    if flops and out["unet_call"]:
        achieved = flops["gflop"] / out["unet_call"]["median"]
        out["achieved_gflops"] = achieved
        out["share_of_peak"] = achieved / peak if peak else None
    return out


def headline(systems: dict, family: str | None = None, controlnet: bool = False) -> dict:
    def value(key, quantity):
        s = systems.get(key, {}).get("summary") or {}
        if quantity == "time":
            return (s.get("total") or {}).get("median")
        if quantity == "unet_call":
            return (s.get("unet_call") or {}).get("median")
        return s.get(quantity)

    ratios = {}
    for other, mine in COUNTERPARTS.items():
        if other not in systems:
            continue
        for edgesd in mine:
            if edgesd not in systems:
                continue
            row = {"edgesd": edgesd, "other": other}
            for quantity in ("time", "unet_call", "peak_rss_mib", "run_peak_rss_mib"):
                a, b = value(edgesd, quantity), value(other, quantity)
                row[quantity] = a / b if a and b else None
            ratios[f"{edgesd} / {other}"] = row
    targets = []
    for edgesd, other, quantity, bound in CONTROLNET_TARGETS if controlnet else TARGETS:
        if edgesd not in systems or other not in systems:
            continue
        if isinstance(bound, dict):
            bound = bound.get(family, bound[None])
        key = {"time": "time", "first_image": "first_image_s"}.get(quantity, "peak_rss_mib")
        a, b = value(edgesd, key), value(other, key)
        ratio = a / b if a and b else None
        targets.append({"edgesd": edgesd, "other": other, "quantity": quantity, "bound": bound, "ratio": ratio,
                        "met": None if ratio is None else ratio <= bound})
    return {"ratios": ratios, "targets": targets}


def compare_outputs(work: Path, systems: dict) -> str | None:
    import numpy as np

    outputs = {k: work / f"{k}.npy" for k in systems if (work / f"{k}.npy").is_file()}
    reference = next((k for k in ("diffusers-torch", "edgesd-ort", "edgesd-ov-fp32") if k in outputs), None)
    if reference is None:
        return None
    ref = np.load(outputs[reference]).astype(np.int16)
    for key, path in outputs.items():
        img = np.load(path).astype(np.int16)
        entry = systems[key]
        if img.shape != ref.shape:
            entry["output_vs_reference"] = {"reference": reference, "shape": list(img.shape),
                                            "reference_shape": list(ref.shape)}
            continue
        diff = np.abs(img - ref)
        entry["output_vs_reference"] = {"reference": reference, "mean_abs": float(diff.mean()),
                                        "max_abs": int(diff.max()), "within_2": float((diff <= 2).mean())}
    return reference


def count_flops(spec: dict, work: Path, timeout: float, in_process: bool = False) -> tuple[dict | None, str | None]:
    """UNet FLOPs per call at this run's batch and latent size (bench/flops.py; in a subprocess
    unless `in_process`, so that this process stays small while the systems run)."""
    edgesd = Path(spec["edgesd"])
    unet = edgesd / "unet" / "model.onnx"
    if not unet.is_file():
        unet = edgesd / "unet" / "openvino_model.xml"
    if not unet.is_file():
        return None, "no UNet model file"
    if in_process:
        flops_module = _flops_module()
        try:
            return flops_module.count(unet, spec["unet_batch"], tuple(spec["latent"])), None
        except Exception as e:
            traceback.print_exc()
            return None, f"bench/flops.py failed: {_short_reason(e)}"
    out = work / "flops.json"
    cmd = [sys.executable, str(HERE / "flops.py"), str(unet), "--batch", str(spec["unet_batch"]),
           "--latent", f"{spec['latent'][0]}x{spec['latent'][1]}", "--no-sgemm", "--json", str(out)]
    rc, tail = _run_child(cmd, work / "flops.log", timeout)
    if rc != 0 or not out.is_file():
        return None, f"bench/flops.py failed (rc {rc}): {tail}"
    data = json.loads(out.read_text())
    data.pop("cpu", None)
    return data, None


def _manifest(folder: Path) -> dict:
    """edgesd.json of `folder`; {} for a folder without one (optimum's)."""
    try:
        return json.loads((folder / "edgesd.json").read_text())
    except (OSError, ValueError):
        return {}


def _latent_and_batch(args, edgesd: Path) -> tuple[list[int], int, dict]:
    manifest = _manifest(edgesd)
    scale = manifest.get("vae_scale_factor", 8)
    try:
        levels = len(json.loads((edgesd / "unet" / "config.json").read_text())["block_out_channels"])
        down = 2 ** (levels - 1)
    except (OSError, ValueError, KeyError):
        down = 8
    side = (args.resolution // scale) // down * down
    batch = 2 if args.guidance > 1 else 1
    return [side, side], batch, manifest


def _family(manifest: dict, folder: Path) -> str | None:
    """edgesd's manifest says; an optimum folder's pipeline class does."""
    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError):
        name = ""
    return manifest.get("family") or ("sdxl" if name.startswith("StableDiffusionXL") else None)


def _model_summary(manifest: dict, folder: Path) -> dict:
    out = {"path": str(folder), "family": manifest.get("family"), "prediction_type": manifest.get("prediction_type")}
    unet = manifest.get("submodels", {}).get("unet", {}).get("formats", {})
    out["unet_precision"] = {fmt: info.get("precision") for fmt, info in unet.items()}
    total = 0
    for fmt_info in (e.get("formats", {}) for e in manifest.get("submodels", {}).values()):
        for info in fmt_info.values():
            total += sum(f.get("bytes", 0) for f in info.get("files", {}).values())
    out["files_mib"] = total / 2**20 if total else None
    return out


def _print_table(systems: dict, ratios: dict):
    print(f"{'system':22} {'status':11} {'total s':>9} {'unet call s':>12} {'peak MiB':>9}  note", file=sys.stderr)
    for key, entry in systems.items():
        s = entry.get("summary") or {}
        total = (s.get("total") or {}).get("median")
        unet = (s.get("unet_call") or {}).get("median")
        peak = s.get("peak_rss_mib")
        print(f"{key:22} {entry['status']:11} {total or float('nan'):9.3f} {unet or float('nan'):12.4f} "
              f"{peak or float('nan'):9.0f}  {entry.get('reason', '')[:90]}", file=sys.stderr)
    for name, row in ratios.items():
        if row["time"] is not None:
            print(f"  {name}: time x{row['time']:.2f}" +
                  (f", peak memory x{row['peak_rss_mib']:.2f}" if row.get("peak_rss_mib") else ""), file=sys.stderr)


def parent_main(args, argv):
    selected = DEFAULT_SYSTEMS if args.systems == "default" else (
        list(SYSTEMS) if args.systems == "all" else [s.strip() for s in args.systems.split(",") if s.strip()])
    unknown = [s for s in selected if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    diffusers, edgesd = Path(args.diffusers_folder).resolve(), Path(args.edgesd_folder).resolve()
    if not (edgesd / "model_index.json").is_file() and not (edgesd / "edgesd.json").is_file():
        raise SystemExit(f"{edgesd} is not a model folder")
    latent, unet_batch, manifest = _latent_and_batch(args, edgesd)
    if args.tiny_vae_model:
        own = Path(args.tiny_vae_model)
        if "edgesd-ov-tiny-vae" not in selected or not (own / "model_index.json").is_file() \
                or _family(_manifest(own), own) != _family(manifest, edgesd):
            raise SystemExit(f"--tiny-vae-model: the edgesd-ov-tiny-vae system runs it, on a model folder of "
                             f"{edgesd.name}'s family ({own} is not one, or the system is not selected)")
    keep = args.work_dir is not None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="edgesd-compare-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    spec = {"diffusers": str(diffusers), "edgesd": str(edgesd), "resolution": args.resolution, "steps": args.steps,
            "strength": args.strength, "guidance": args.guidance, "prompt": args.prompt,
            "negative_prompt": args.negative_prompt, "seed": args.seed, "latent": latent, "unet_batch": unet_batch,
            "task": args.task, "family": _family(manifest, edgesd), "tiny_vae": args.tiny_vae and str(Path(args.tiny_vae).resolve()),
            "tiny_vae_model": args.tiny_vae_model and str(Path(args.tiny_vae_model).resolve()),
            "controlnet": args.controlnet and dict(zip(("diffusers", "edgesd"), (str(Path(f).resolve()) for f in args.controlnet)))}
    systems = {}
    for key in selected:
        entry = {"label": SYSTEMS[key]["label"], "project": SYSTEMS[key]["project"], "engine": SYSTEMS[key]["engine"],
                 "precision": SYSTEMS[key]["precision"], "status": "pending", "turns": [], "runs": []}
        folder = diffusers if SYSTEMS[key]["folder"] == "diffusers" else edgesd
        fmt = SYSTEMS[key].get("format")
        if SYSTEMS[key]["folder"] == "diffusers" and not (diffusers / "model_index.json").is_file():
            entry.update(status="failed", reason=f"{diffusers} is not a diffusers folder (no model_index.json)")
        elif fmt and not list((folder / "unet").glob("model.onnx" if fmt == "onnx" else "openvino_model.xml")):
            entry.update(status="failed", reason=f"{folder} has no {fmt} files (export with --format both)")
        systems[key] = entry

    # the other systems' copy of the folder (without edgesd's ControlNet inputs), then openvino_genai's of that
    spec["plain"] = str(edgesd)
    others = [k for k in selected if SYSTEMS[k]["project"] not in ("edgesd", "diffusers") and systems[k]["status"] == "pending"]
    if others and manifest.get("unet_controlnet_inputs"):
        result_file = work / "prepare-plain.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(diffusers), str(edgesd),
               "--prepare-plain", str(work / "plain-model"), "--result", str(result_file)]
        rc, tail = _run_child(cmd, work / "prepare-plain.log", args.timeout)
        prep = json.loads(result_file.read_text()) if result_file.is_file() else {
            "status": "failed", "reason": f"preparation exited with {rc}: {tail}"}
        if prep["status"] != "ok":
            for k in others:
                systems[k].update(status="failed", reason=f"preparing the folder failed: {prep['reason']}")
        spec["plain"] = str(work / "plain-model")
    plain = Path(spec["plain"])
    if any(SYSTEMS[k]["project"] == "openvino-genai" and systems[k]["status"] == "pending" for k in selected):
        import importlib.util

        missing = [m for m in ("openvino_genai", "openvino_tokenizers") if importlib.util.find_spec(m) is None]
        if missing:
            spec["genai"], spec["genai_reason"] = None, f"{' and '.join(missing)} not installed"
        else:
            if args.isolation == "inline":  # transformers gets imported here anyway
                try:
                    prep = {"status": "ok", "adapted": prepare_genai(plain, work / "genai-model")}
                except Exception as e:
                    traceback.print_exc()
                    prep = {"status": "failed", "reason": _short_reason(e)}
            else:  # keep this process light: it stays resident while the systems run
                result_file = work / "prepare-genai.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), str(diffusers), str(plain),
                       "--prepare-genai", str(work / "genai-model"), "--result", str(result_file)]
                rc, tail = _run_child(cmd, work / "prepare-genai.log", args.timeout)
                prep = json.loads(result_file.read_text()) if result_file.is_file() else {
                    "status": "failed", "reason": f"preparation exited with {rc}: {tail}"}
            if prep["status"] == "ok":
                spec["genai"], spec["genai_adapted"] = str(work / "genai-model"), prep["adapted"]
            else:
                spec["genai"], spec["genai_reason"] = None, f"preparing the folder failed: {prep['reason']}"
        for k in selected:
            if SYSTEMS[k]["project"] == "openvino-genai" and spec.get("genai") is None:
                status = "unavailable" if missing else "failed"
                systems[k].update(status=status, reason=spec["genai_reason"])
            elif SYSTEMS[k]["project"] == "openvino-genai":
                systems[k]["adapted"] = spec["genai_adapted"]
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))

    if args.no_flops:
        flops, flops_reason = None, "skipped (--no-flops)"
    else:
        flops, flops_reason = count_flops(spec, work, args.timeout, in_process=args.isolation == "inline")

    if args.isolation == "inline":
        run_inline(args, spec, systems, work)
    else:
        run_isolated(args, spec_file, systems, work)

    reference = compare_outputs(work, systems)
    info = machine()
    peak = info.get("peak_gflops")
    for key, entry in systems.items():
        if entry["status"] == "pending":
            entry["status"] = "ok" if entry["runs"] else "failed"
        entry["summary"] = summarise(entry, flops, peak)
    heads = headline({k: v for k, v in systems.items() if v["status"] == "ok"}, spec["family"], bool(spec["controlnet"]))
    command = "python bench/compare.py " + shlex.join(argv)
    result = {
        "schema": SCHEMA,
        "name": args.name or (Path(args.out).stem if args.out else None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "command": command,
        "cwd": os.getcwd(),
        "edgesd_commit": edgesd_commit(),
        "settings": {"task": args.task, "resolution": args.resolution, "steps": args.steps, "strength": args.strength,
                     "guidance": args.guidance, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
                     "seed": args.seed, "repeat": args.repeat, "runs_per_turn": args.runs, "warmup": args.warmup,
                     "isolation": args.isolation, "order": "rotated by one each round",
                     "latent": latent, "unet_batch": unet_batch, "systems": selected},
        "models": {"diffusers": str(diffusers), "edgesd": _model_summary(manifest, edgesd),
                   **({"tiny_vae_model": _model_summary(_manifest(Path(spec["tiny_vae_model"])), Path(spec["tiny_vae_model"]))}
                      if spec["tiny_vae_model"] else {})},
        "machine": info,
        "versions": versions(),
        "openvino_cpu_default_precision": _ov_default_precision(),
        "unet_flops": flops,
        "unet_flops_reason": flops_reason,
        "output_reference": reference,
        "systems": systems,
        **heads,
        "reproduce": {key: _row_command(argv, key) for key in systems},
    }
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    _print_table(systems, heads["ratios"])
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _row_command(argv: list[str], key: str) -> str:
    """The command that re-measures one system alone (its own --out, so the full result is kept)."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in ("--systems", "--work-dir", "--out", "--name"):
            skip = "=" not in token
            if name == "--out":
                value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
                path = Path(value)
                out += ["--out", str(path.with_name(f"{path.stem}-{key}{path.suffix or '.json'}"))]
            continue
        out.append(token)
    return "python bench/compare.py " + shlex.join(out + ["--systems", key])


def _ov_default_precision() -> str | None:
    """What OpenVINO's CPU plugin computes in by default here (bf16 on AVX512-BF16/AMX CPUs)."""
    try:
        import openvino as ov

        return _type_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception:
        return None


def _order(keys: list[str], round_index: int) -> list[str]:
    if not keys:
        return keys
    shift = round_index % len(keys)
    return keys[shift:] + keys[:shift]


def run_isolated(args, spec_file: Path, systems: dict, work: Path):
    for r in range(args.repeat):
        live = [k for k, e in systems.items() if e["status"] == "pending"]
        for key in _order(live, r):
            result_file = work / f"{key}.{r}.json"
            output = work / f"{key}.npy"
            cmd = [sys.executable, str(Path(__file__).resolve()), "-", "-", "--worker", key, "--spec", str(spec_file),
                   "--result", str(result_file), "--runs", str(args.runs), "--warmup", str(args.warmup)]
            if r == 0:
                cmd += ["--save-output", str(output)]
            print(f"round {r + 1}/{args.repeat}: {key}", file=sys.stderr, flush=True)
            rc, tail = _run_child(cmd, work / f"{key}.{r}.log", args.timeout)
            if result_file.is_file():
                turn = json.loads(result_file.read_text())
            elif rc is None:
                turn = {"status": "failed", "reason": f"timed out after {args.timeout:.0f} s"}
            else:
                turn = {"status": "failed", "reason": f"worker exited with {rc} ({_signal_name(rc)}): {tail}"}
            _record_turn(systems[key], turn, r)


def _signal_name(rc: int) -> str:
    import signal

    if rc is not None and rc < 0:
        try:
            return signal.Signals(-rc).name + (" (out of memory?)" if -rc == signal.SIGKILL else "")
        except ValueError:
            pass
    return "error"


def _record_turn(entry: dict, turn: dict, round_index: int):
    if turn.get("status") != "ok":
        entry.update(status=turn.get("status", "failed"), reason=turn.get("reason", "unknown"))
        return
    runs = turn.pop("runs")
    for run in runs:
        run["round"] = round_index
    entry["runs"].extend(runs)
    turn["round"] = round_index
    entry["turns"].append(turn)
    entry["info"] = turn.get("info", {})


def run_inline(args, spec: dict, systems: dict, work: Path):
    import numpy as np

    loaded = {}
    for key, entry in systems.items():
        if entry["status"] != "pending":
            continue
        timer = StageTimer()
        try:
            _import_check(key)
            t0 = time.perf_counter()
            run, info = load_system(key, spec, timer)
            load_s = time.perf_counter() - t0
            first = None
            for i in range(args.warmup):
                row, pixels = measure(run, timer)
                first = row["total"] if i == 0 else first
        except Unavailable as e:
            entry.update(status="unavailable", reason=str(e))
            continue
        except Exception as e:
            traceback.print_exc()
            entry.update(status="failed", reason=_short_reason(e))
            continue
        loaded[key] = (run, info, timer)
        entry["turns"].append({"load_s": load_s, "first_run_s": first})
        entry["memory_note"] = "inline isolation: all systems share one process, no per-system memory"
    for r in range(args.repeat):
        for key in _order(list(loaded), r):
            run, info, timer = loaded[key]
            try:
                for _ in range(args.runs):
                    row, pixels = measure(run, timer)
                    row["round"] = r
                    systems[key]["runs"].append(row)
                if r == 0:
                    np.save(work / f"{key}.npy", pixels)
            except Exception as e:
                traceback.print_exc()
                systems[key].update(status="failed", reason=_short_reason(e))
                del loaded[key]
    for key, (run, info, timer) in loaded.items():
        try:
            systems[key]["info"] = info()
        except Exception:
            pass


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("diffusers_folder", help="diffusers model folder (save_pretrained layout) for diffusers-torch")
    parser.add_argument("edgesd_folder", help="edgesd model folder exported with --format both")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--prompt", default="a benchmark prompt: a watercolor painting of hills at sunset")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("img2img", "inpaint"), default="img2img",
                        help="inpaint: every system repaints the same centred mask (bench_mask); use an inpainting model")
    parser.add_argument("--tiny-vae", help="VAE folder (edgesd export of a tiny VAE) for the edgesd-ov-tiny-vae system")
    parser.add_argument("--tiny-vae-model", help="model folder the edgesd-ov-tiny-vae system runs (default EDGESD_FOLDER), "
                                                 "e.g. EDGESD_FOLDER's `--target cpu` export")
    parser.add_argument("--controlnet", nargs=2, metavar=("DIFFUSERS", "EDGESD"),
                        help="a ControlNet (its diffusers folder, its edgesd export) steering every edgesd and diffusers "
                             "system by the Canny edges of the input; the other systems have no ControlNet")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; every system runs once per round")
    parser.add_argument("--runs", type=int, default=1, help="timed calls per system per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after each load (the first is the cold run)")
    parser.add_argument("--systems", default="default",
                        help=f"comma-separated keys, 'default' ({','.join(DEFAULT_SYSTEMS)}) or 'all'")
    parser.add_argument("--isolation", choices=("process", "inline"), default="process",
                        help="process: each system's turn in a fresh subprocess (memory per system); inline: all in this one")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one system's turn")
    parser.add_argument("--no-flops", action="store_true", help="skip counting the UNet's FLOPs")
    parser.add_argument("--name", help="name of this result (default: the --out file's stem)")
    parser.add_argument("--out", help="write the JSON here (default: stdout)")
    parser.add_argument("--work-dir", help="keep intermediate files here (default: a temporary folder, removed)")
    # internal: one system's turn / openvino_genai's folder, run as subprocesses of the above
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--save-output", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-genai", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-plain", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.prepare_genai or args.prepare_plain:
        return prepare_main(args)
    if args.repeat < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--repeat and --runs must be >= 1, --warmup >= 0")
    return parent_main(args, argv)


if __name__ == "__main__":
    main()
