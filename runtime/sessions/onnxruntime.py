"""onnxruntime sessions: CPU, or CUDA when onnxruntime-gpu and a GPU are present."""

import threading
from pathlib import Path

import numpy as np

from edgesd.errors import BackendUnavailableError
from edgesd.lora import QUANTIZED, LoraMerge, add_delta, module_of, shared_by

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(double)": np.float64}
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _import():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime (or 'edgesd[gpu]')") from None
    return onnxruntime


def resolve_device(device: str) -> str:
    ort = _import()
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device not in _PROVIDERS:
        raise BackendUnavailableError(f"onnxruntime runs on 'cpu' or 'cuda', not {device!r}; use --backend openvino for gpu/npu")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailableError("CUDA is not available to onnxruntime: pip install 'edgesd[gpu]' on a machine with an NVIDIA GPU")
    return device


def effective_precision(device: str, requested: str, stored: str) -> str:
    """onnxruntime computes in the precision the model was exported in."""
    return stored


_shared_arena = []  # the process-wide CPU arena, once registered
_registering = threading.Lock()  # sessions may be opened from several threads at once


def _share_cpu_arena(ort, options) -> None:
    """Let the session allocate from one CPU arena shared by every session of the process instead of
    an arena of its own. Arenas keep their peak; a pipeline's submodels run one after another, so one
    shared arena needs the largest submodel's peak rather than the sum of all. Measured on the SD 1.5
    (inpainting) architecture at 512x512: 11.7 -> 9.4 GB peak, the UNet step 2% faster.
    Memory patterns go: from the second call on they allocate each run's tensors as one block planned
    on the first, and those blocks did not fit the shared arena's chunks and grew it (SD 1.5
    inpainting at 512: 5.3 -> 6.2 GB on the second call; without them 5.3 GB on every call, as fast)."""
    options.enable_mem_pattern = False
    with _registering:
        if not _shared_arena:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena.append(info)
    options.add_session_config_entry("session.use_env_allocators", "1")


class OnnxRuntimeSession:
    """On CUDA, inputs go through IO binding: an input fed again as the same unchanged array (the
    prompt embeddings, every denoising step) stays on the GPU instead of being copied each call."""

    backend = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", precision: str = "auto", threads: int | None = None,
                 io_binding: bool | None = None, lora: "LoraMerge | None" = None):
        ort = _import()
        if precision not in ("auto", "fp32"):
            raise BackendUnavailableError(
                f"onnxruntime computes in the precision the model was exported in; for {precision} use --backend openvino"
                + (" or export with `edgesd export --precision fp16`" if precision == "fp16" else "")
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = _PROVIDERS[resolve_device(device)]
        if providers[0] == "CPUExecutionProvider":
            _share_cpu_arena(ort, options)
        model, merged = (str(path), {}) if not lora else _with_lora(Path(path), lora)
        # replaced in the graph before onnxruntime optimizes it (casts, layouts, fusions read them);
        # it copies them while the session is created, after which they are freed
        values = [ort.OrtValue.ortvalue_from_numpy(array) for array in merged.values()]
        if merged:
            options.add_external_initializers(list(merged), values)
        self._session = ort.InferenceSession(model, options, providers=providers)
        del options, model, merged, values
        self.device = self._session.get_providers()[0]
        self.input_types = {i.name: np.dtype(_DTYPES[i.type]) for i in self._session.get_inputs()}
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._io_binding = self.device == "CUDAExecutionProvider" if io_binding is None else io_binding
        self._ort_device = "cuda" if self.device == "CUDAExecutionProvider" else "cpu"
        self._resident = {}  # input name -> (array, OrtValue on the device) for inputs fed unchanged

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._io_binding:
            return dict(zip(self.output_names, self._session.run(None, feeds)))
        ort = _import()
        binding = self._session.io_binding()
        for name, array in feeds.items():
            held = self._resident.get(name)
            if held is None or held[0] is not array or array.flags.writeable:
                held = (array, ort.OrtValue.ortvalue_from_numpy(array, self._ort_device, 0))
                self._resident[name] = held
            binding.bind_ortvalue_input(name, held[1])
        for name in self.output_names:
            binding.bind_output(name, self._ort_device)
        self._session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))


def _with_lora(path: Path, lora: LoraMerge) -> tuple[str | bytes, dict[str, np.ndarray]]:
    """(the model to open, {initializer: weight with the LoRAs' deltas added}) for every weight they
    change. onnxruntime takes replacements before optimizing for initializers stored outside the
    model file only: a model whose weights are inside it (under 2 GB) is opened from bytes in which
    those initializers are marked external (and never read).

    Linear weights are anonymous in torch.onnx's graphs (onnx::MatMul_123) and stored (in, out):
    they are found through the MatMul/Gemm/Conv node using them, whose name carries the module."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    weights, modules = {}, {}
    for node in graph.node:
        module = module_of(node.name)
        if module is None or len(node.input) < 2:
            continue
        if node.op_type in ("MatMul", "Gemm", "Conv") and node.input[1] in initializers:
            transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not any(
                a.name == "transB" and a.i for a in node.attribute))
            weights[module] = (node.input[1], transposed)
            dims = tuple(initializers[node.input[1]].dims)
            modules[module] = dims[::-1] if transposed else dims
        elif node.input[1] in dequantized or node.op_type in ("MatMulInteger", "ConvInteger", "MatMulNBits"):
            modules[module] = QUANTIZED
    shared_by(weights, modules)
    merged = {}
    for module, delta in lora.deltas(modules):
        name, transposed = weights[module]
        base = numpy_helper.to_array(initializers[name], base_dir=str(path.parent))
        merged[name] = add_delta(base, delta, transposed, module)
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in graph.initializer):
        return str(path), merged
    for name in merged:
        tensor = initializers[name]
        for field in ("raw_data", "float_data", "int32_data", "double_data"):
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="replaced-by-edgesd")
    return model.SerializeToString(), merged
