"""Task pipelines, one module each, on the shared layer in base.py (see DESIGN.md)."""

from edgesd.pipelines.base import Pipeline, Result, resolve_settings
from edgesd.pipelines.img2img import Img2ImgPipeline

__all__ = ["Pipeline", "Result", "resolve_settings", "Img2ImgPipeline"]
