"""edgesd: Stable Diffusion img2img on edge devices, without torch at inference time."""

__version__ = "0.3.0"

from edgesd.errors import (
    BackendUnavailableError,
    EdgesdError,
    InvalidInputError,
    ModelFolderError,
    UnsupportedSchedulerError,
)
from edgesd.pipelines import Img2ImgPipeline, InpaintPipeline, Result

Img2ImgResult = Result  # the name of 0.1

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
