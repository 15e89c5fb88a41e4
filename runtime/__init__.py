"""edgesd: Stable Diffusion img2img on edge devices, without torch at inference time.

The root imports lazily: `edgesd --version` and `from edgesd.errors import ...` load nothing heavy;
the pipelines (numpy, the engines' registry, tokenizers) load when first named."""

__version__ = "0.3.0"

from edgesd.errors import (
    BackendUnavailableError,
    EdgesdError,
    InvalidInputError,
    ModelFolderError,
    UnsupportedSchedulerError,
)

_PIPELINES = {"Img2ImgPipeline", "InpaintPipeline", "Result", "Img2ImgResult"}


def __getattr__(name: str):
    if name in _PIPELINES:
        from edgesd import pipelines

        return pipelines.Result if name == "Img2ImgResult" else getattr(pipelines, name)  # Img2ImgResult: 0.1's name
    raise AttributeError(f"module 'edgesd' has no attribute {name!r}")


__all__ = [
    "Img2ImgPipeline",
    "InpaintPipeline",
    "Img2ImgResult",
    "Result",
    "EdgesdError",
    "ModelFolderError",
    "InvalidInputError",
    "BackendUnavailableError",
    "UnsupportedSchedulerError",
]
