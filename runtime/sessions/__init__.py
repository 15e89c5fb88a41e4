"""Inference engines behind one small `Session` interface (see base.py)."""

import importlib.util
import logging
from pathlib import Path

from edgesd.errors import BackendUnavailableError
from edgesd.sessions.base import Session

log = logging.getLogger("edgesd")
BACKENDS = ("onnxruntime", "openvino")
DEVICES = ("auto", "cpu", "gpu", "cuda", "npu")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def choose_backend(backend: str, device: str, formats: list[str]) -> str:
    """Resolve backend='auto': CUDA needs onnxruntime; otherwise OpenVINO where it and its IR exist
    (the faster engine on Intel CPUs and the only one for iGPU/NPU), else onnxruntime."""
    if backend not in ("auto", *BACKENDS):
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendUnavailableError(f"unknown device {device!r}; choose {', '.join(DEVICES)}")
    usable = [b for b in installed_backends() if {"onnxruntime": "onnx", "openvino": "openvino"}[b] in formats]
    if backend != "auto":
        if backend not in usable:
            raise BackendUnavailableError(
                f"backend {backend} cannot run this model folder (it has: {', '.join(formats)}; installed engines: "
                f"{', '.join(installed_backends()) or 'none'}); re-export with --format, or install the engine"
            )
        return backend
    preference = ["onnxruntime"] if device == "cuda" else ["openvino", "onnxruntime"]
    for candidate in preference:
        if candidate in usable:
            log.info("backend auto: using %s", candidate)
            return candidate
    raise BackendUnavailableError(
        f"no installed engine can run this model folder on {device} (it has: {', '.join(formats)}); "
        "pip install onnxruntime or 'edgesd[openvino]'"
    )


def open_session(backend: str, path: Path, device: str = "auto", precision: str = "auto", **options) -> Session:
    """Compile one submodel; device "auto" means CUDA/GPU when present, else CPU."""
    if backend == "onnxruntime":
        from edgesd.sessions.onnxruntime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, device, precision, threads=options.get("threads"))
    from edgesd.sessions.openvino import OpenVINOSession

    return OpenVINOSession(path, device, precision, cache_dir=options.get("cache_dir"))
