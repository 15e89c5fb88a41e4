"""onnxruntime sessions: CPU, or CUDA when onnxruntime-gpu and a GPU are present."""

from pathlib import Path

import numpy as np

from edgesd.errors import BackendUnavailableError

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


class OnnxRuntimeSession:
    """On CUDA, inputs go through IO binding: an input fed again as the same unchanged array (the
    prompt embeddings, every denoising step) stays on the GPU instead of being copied each call."""

    backend = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", precision: str = "auto", threads: int | None = None,
                 io_binding: bool | None = None):
        ort = _import()
        if precision not in ("auto", "fp32"):
            raise BackendUnavailableError(
                f"onnxruntime computes in the precision the model was exported in; for {precision} export with "
                f"`edgesd export --precision {precision}` or use --backend openvino"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=_PROVIDERS[resolve_device(device)])
        self.device = self._session.get_providers()[0]
        self.input_types = {i.name: np.dtype(_DTYPES[i.type]) for i in self._session.get_inputs()}
        self._io_binding = self.device == "CUDAExecutionProvider" if io_binding is None else io_binding
        self._ort_device = "cuda" if self.device == "CUDAExecutionProvider" else "cpu"
        self._resident = {}  # input name -> (array, OrtValue on the device) for inputs fed unchanged

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self._io_binding:
            return self._session.run(None, feeds)
        ort = _import()
        binding = self._session.io_binding()
        for name, array in feeds.items():
            held = self._resident.get(name)
            if held is None or held[0] is not array or array.flags.writeable:
                held = (array, ort.OrtValue.ortvalue_from_numpy(array, self._ort_device, 0))
                self._resident[name] = held
            binding.bind_ortvalue_input(name, held[1])
        for output in self._session.get_outputs():
            binding.bind_output(output.name, self._ort_device)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
