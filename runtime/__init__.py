"""edgesd: Stable Diffusion img2img on edge devices, without torch at inference time."""

__version__ = "0.2.0"

from edgesd.errors import (
    BackendUnavailableError,
    EdgesdError,
    InvalidInputError,
    ModelFolderError,
    UnsupportedSchedulerError,
)
from edgesd.pipeline import Img2ImgPipeline, Img2ImgResult

__all__ = [
    "Img2ImgPipeline",
    "Img2ImgResult",
    "EdgesdError",
    "ModelFolderError",
    "InvalidInputError",
    "BackendUnavailableError",
    "UnsupportedSchedulerError",
]
