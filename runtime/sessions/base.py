"""The one interface the pipeline sees: a compiled submodel that maps named arrays to named arrays."""

from typing import Protocol

import numpy as np


class Session(Protocol):
    backend: str  # "onnxruntime" or "openvino"
    device: str  # the engine's own device name, e.g. "CPUExecutionProvider" or "CPU"
    input_types: dict[str, np.dtype]  # what each input must be fed as (e.g. timestep float32 vs int64)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; the outputs by name, owned by the caller."""
        ...


def output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The output called `name`, or a model's only output whatever its name (exporters name single
    outputs differently); several outputs none of which is `name` is an error naming them."""
    if name in outputs:
        return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    from edgesd.errors import ModelFolderError

    raise ModelFolderError(f"the model has no output {name!r} (it has {', '.join(outputs)}); re-export it with edgesd export")
