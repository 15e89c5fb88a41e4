"""Inference engines behind one small `Session` interface (see base.py), and the one registry of
them: which on-disk format each runs, its files, and how a session is opened."""

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from edgesd.errors import BackendUnavailableError, EdgesdError, ModelFolderError
from edgesd.formats import FORMATS
from edgesd.sessions.base import Session

log = logging.getLogger("edgesd")
DEVICES = ("auto", "cpu", "gpu", "cuda", "npu")


@dataclass(frozen=True)
class Backend:
    name: str  # what users pass as backend=, also the engine's import name
    format: str  # the model-folder format it runs (formats.FORMATS' key, the manifest's)
    session: str  # "module:Class" of its Session, imported only when one is opened
    options: tuple[str, ...]  # the open() options this engine takes

    @property
    def main_file(self) -> str:
        return FORMATS[self.format].main_file

    @property
    def files(self) -> tuple[str, ...]:
        return FORMATS[self.format].files

    def open(self, path: Path, device: str, precision: str, **options) -> Session:
        module, cls = self.session.split(":")
        taken = {name: options.get(name) for name in self.options}
        session = getattr(importlib.import_module(module), cls)
        try:
            return session(path, device, precision, **taken)
        except (EdgesdError, MemoryError):
            raise
        except Exception as e:  # what the engine says of files it cannot parse (each engine has its own types)
            said = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__  # OpenVINO's reason comes last
            raise ModelFolderError(f"damaged model files in {path.parent.name}/ ({', '.join(self.files)}): {self.name} "
                                   f"cannot read them ({said}); re-download or re-export the model") from e

    def effective_precision(self, device: str, requested: str, stored: str) -> str:
        """What the engine computes in for `requested` ("auto" resolved, one the device lacks its fallback)
        on weights stored as `stored`."""
        return importlib.import_module(self.session.split(":")[0]).effective_precision(device, requested, stored)

    def device_used(self, device: str) -> str:
        """The device `device` ("auto" included) runs on, in edgesd's names (cpu, gpu, npu, cuda)."""
        return importlib.import_module(self.session.split(":")[0]).resolve_device(device).lower()


BACKENDS = {b.name: b for b in (
    Backend("onnxruntime", "onnx", "edgesd.sessions.onnxruntime:OnnxRuntimeSession", ("threads", "lora")),
    Backend("openvino", "openvino", "edgesd.sessions.openvino:OpenVINOSession", ("threads", "cache_dir", "lora")),
)}
BACKEND_OF_FORMAT = {b.format: b for b in BACKENDS.values()}


def _why(chosen: str, preference: list[str], device: str, small: bool, weights: int | None) -> str:
    if device in ("cuda", "gpu", "npu"):
        return f"the engine for {device}"
    if chosen != preference[0]:
        return "the one engine here for this folder"
    if small:
        return f"a {weights / 2**20:.3g} MiB model, where OpenVINO's compile costs more than it saves"
    return "the faster engine for SD-size models on CPUs, first image included"


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


# Below this much weight, onnxruntime gives a one-off's first image sooner than OpenVINO, whose compile
# for the input's shapes then costs more than its faster calls save (bench/first_image.py, REPORT.md:
# whole one-off commands, 13 MiB test models 1.2-1.8x onnxruntime's time; SD-turbo 0.47-0.49x at 256
# and 512 px, where onnxruntime's load, 6.5-7.8 s, is the slow part).
SMALL_MODEL_BYTES = 256 * 2**20


def choose_backend(backend: str, device: str, formats: list[str], weights: int | None = None) -> str:
    """Resolve backend='auto': CUDA needs onnxruntime; otherwise OpenVINO where it and its IR exist
    (the faster engine on Intel CPUs, first image included, and the only one for iGPU/NPU), else
    onnxruntime; on the CPU, a model of fewer `weights` bytes than SMALL_MODEL_BYTES runs on
    onnxruntime where it can."""
    if backend not in ("auto", *BACKENDS):
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendUnavailableError(f"unknown device {device!r}; choose {', '.join(DEVICES)}")
    usable = [b for b in installed_backends() if BACKENDS[b].format in formats]
    if backend != "auto":
        if backend not in usable:
            raise BackendUnavailableError(
                f"backend {backend} cannot run this model folder (it has: {', '.join(formats)}; installed engines: "
                f"{', '.join(installed_backends()) or 'none'}); re-export with --format, or install the engine"
            )
        return backend
    small = device in ("auto", "cpu") and weights is not None and weights < SMALL_MODEL_BYTES
    preference = ["onnxruntime"] if device == "cuda" else ["onnxruntime", "openvino"] if small else ["openvino", "onnxruntime"]
    for candidate in preference:
        if candidate in usable:
            log.info("backend auto: using %s (%s)", candidate, _why(candidate, preference, device, small, weights))
            return candidate
    raise BackendUnavailableError(
        f"no installed engine can run this model folder on {device} (it has: {', '.join(formats)}); "
        "pip install onnxruntime or 'edgesd[openvino]'"
    )


def open_session(backend: str, path: Path, device: str = "auto", precision: str = "auto", **options) -> Session:
    """Compile one submodel; device "auto" means CUDA/GPU when present, else CPU. `options`: threads
    (CPU threads, both engines), cache_dir (OpenVINO), lora (a LoraMerge for this submodel); each engine takes the
    ones it has."""
    return BACKENDS[backend].open(path, device, precision, **options)
