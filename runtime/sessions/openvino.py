"""OpenVINO sessions: CPU, GPU, NPU or AUTO, compiled for static shapes on first use.

The model is reshaped to the shapes of each call (resolution and batch are fixed within a
pipeline call), which lets the CPU plugin pick faster kernels than with dynamic shapes; the last
few shapes stay compiled, a new one compiles.

The compile cache (OpenVINO's CACHE_DIR) is on for GPU and NPU, whose kernel builds take long,
and off on the CPU unless a cache folder is asked for: there it trades memory for little time.
Measured on the SD 1.5 UNet at 256x256 (bf16): importing the cached blob instead of compiling saves
2 s (5.4 -> 3.3 s), but the blob holds the fp32 weights again (3.3 GB of disk per compiled shape)
and is read on top of the memory-mapped IR, so the process peaks at 8.4 GB instead of 5.1 GB.
Its weightless mode (CACHE_MODE OPTIMIZE_SIZE) keeps the peak but saves nothing on the CPU (SD-turbo
UNet at 512: 1.75 s to import against 1.51 s to compile). Compiling the UNet and VAE decoder in the
background while the prompt and image are encoded did not shorten the first call on 2 cores either
(8.7-9.8 s with, 8.6-8.9 s without): the compile already uses every core.
"""

from pathlib import Path

import numpy as np

from edgesd.cache import cache_root
from edgesd.errors import BackendUnavailableError
from edgesd.lora import QUANTIZED, LoraMerge, add_delta, module_of, shared_by
from edgesd.sessions import mapped_weights

_COMPILED_SHAPES = 4  # enough for a tiled VAE's full, right, bottom and corner tiles
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}


def _import():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'edgesd[openvino]'") from None
    return openvino


def resolve_device(device: str) -> str:
    ov = _import()
    if device not in _DEVICES:
        raise BackendUnavailableError(f"OpenVINO runs on cpu, gpu, npu or auto, not {device!r}; use --backend onnxruntime for cuda")
    available = ov.Core().available_devices
    if device == "auto":
        return "GPU" if any(d.startswith("GPU") for d in available) else "CPU"
    if not any(d.startswith(_DEVICES[device]) for d in available):
        raise BackendUnavailableError(f"OpenVINO sees no {_DEVICES[device]} device here (it sees: {', '.join(available)})")
    return _DEVICES[device]


def effective_precision(device: str, requested: str, stored: str) -> str:
    """The precision the plugin computes in: the one requested where the device has it (its
    OPTIMIZATION_CAPABILITIES), else its default for the device (bf16 on CPUs with AVX512-BF16/AMX,
    f16 on GPUs, f32 elsewhere: the CPU plugin runs bf16 asked of a CPU without them in fp32,
    silently); quantized layers run int8 either way."""
    try:
        core, name = _import().Core(), resolve_device(device)
        if requested != "auto" and requested.upper() in core.get_property(name, "OPTIMIZATION_CAPABILITIES"):
            return requested
        hint = core.get_property(name, "INFERENCE_PRECISION_HINT").get_type_name()
    except (BackendUnavailableError, RuntimeError):
        return requested
    return {"f32": "fp32", "f16": "fp16"}.get(hint, hint)


class OpenVINOSession:
    backend = "openvino"

    def __init__(self, path: Path, device: str = "cpu", precision: str = "auto", threads: int | None = None,
                 cache_dir: Path | None = None, lora: LoraMerge | None = None):
        ov = _import()
        if precision not in ("auto", *_HINTS):
            raise BackendUnavailableError(f"unknown inference precision {precision!r}; use auto, fp32, bf16 or fp16")
        self._core = ov.Core()
        self._path = str(path)
        self._weights = Path(path).with_suffix(".bin")
        model = self._core.read_model(self._path)
        self._lora = lora
        if lora:  # a LoRA that does not fit fails here; it is merged when a shape is compiled
            lora.targets(_weights(model)[1])
        self.device = resolve_device(device)
        self._config = {}
        if precision != "auto":
            self._config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
        if threads and self.device == "CPU":  # e.g. a Ray worker's share of a node
            self._config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir or self.device != "CPU":
            self._config["CACHE_DIR"] = str(cache_dir or cache_root() / "openvino")
        self.input_types = {p.get_any_name(): np.dtype(p.get_element_type().to_dtype()) for p in model.inputs}
        self.output_names = [min(p.get_names(), default=f"output_{i}") for i, p in enumerate(model.outputs)]
        self._requests = {}  # input shapes -> infer request, the most recently used last

    def _request_for(self, shapes: tuple):
        """The infer request compiled for `shapes` (compiling it if need be), and whether it is new."""
        if shapes in self._requests:
            self._requests[shapes] = self._requests.pop(shapes)
            return self._requests[shapes], False
        if len(self._requests) == _COMPILED_SHAPES:
            self._requests.pop(next(iter(self._requests)))
        # Read afresh (weights are memory-mapped) and let go after compiling, giving back the mapped
        # pages as the engine copies them: the compiled model keeps its own copy (mapped_weights).
        model = self._core.read_model(self._path)
        with mapped_weights.released_while(self._weights):
            if self._lora:  # recomputed rather than held: the compiled model keeps its own copy
                _merge(model, self._lora)
            model.reshape(dict(shapes))
            self._requests[shapes] = self._core.compile_model(model, self.device, self._config).create_infer_request()
            del model
        return self._requests[shapes], True

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request, fresh = self._request_for(tuple((name, tuple(array.shape)) for name, array in feeds.items()))
        result = request.infer(feeds, share_inputs=True)
        if fresh:  # in case the first inference repacked more weights
            mapped_weights.release(self._weights)
        return {name: result[i] for i, name in enumerate(self.output_names)}


def _weights(model) -> tuple[dict, dict]:
    """The weight constants by module: {module: (constant, stored (in, out))} and {module: its shape
    in torch's layout, or why it cannot take a delta}. A weight is the constant feeding a MatMul or
    Convolution, maybe through a Convert (fp16 IR); one behind Subtract/Multiply (and Reshape, for
    group-wise compression) is int8-compressed. The module comes from the consumer's name (module_of)."""
    constants, modules = {}, {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Convolution") or (module := module_of(op.get_friendly_name())) is None:
            continue
        source, reshaped = op.input_value(1).get_node(), False
        while source.get_type_name() in ("Convert", "Reshape"):
            reshaped |= source.get_type_name() == "Reshape"
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant" and reshaped:
            modules[module] = "is reshaped in the graph"
        elif source.get_type_name() == "Constant":
            transposed = op.get_type_name() == "MatMul" and not op.get_attributes()["transpose_b"]
            constants[module] = (source, transposed)
            shape = tuple(source.get_output_shape(0))
            modules[module] = shape[::-1] if transposed else shape
        elif source.get_type_name() in ("Multiply", "Subtract", "FakeQuantize", "FakeConvert"):
            modules[module] = QUANTIZED
    shared_by({module: (constant.get_instance_id(), t) for module, (constant, t) in constants.items()}, modules)
    return constants, modules


def _merge(model, lora: LoraMerge) -> None:
    """Replace each weight constant the LoRAs change with the merged one."""
    ov = _import()
    constants, modules = _weights(model)
    for module, delta in lora.deltas(modules):
        constant, transposed = constants[module]
        merged = add_delta(constant.get_data(), delta, transposed, module)
        constant.output(0).replace(ov.op.Constant(merged).output(0))
