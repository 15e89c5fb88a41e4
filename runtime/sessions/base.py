"""The one interface the pipeline sees: a compiled submodel that maps named arrays to arrays."""

from typing import Protocol

import numpy as np


class Session(Protocol):
    backend: str  # "onnxruntime" or "openvino"
    device: str  # the engine's own device name, e.g. "CPUExecutionProvider" or "CPU"
    input_types: dict[str, np.dtype]  # what each input must be fed as (e.g. timestep float32 vs int64)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the model's output order, owned by the caller."""
        ...
