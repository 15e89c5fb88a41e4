"""Task pipelines, one module each, on the shared layer in base.py (see DESIGN.md)."""

from edgesd.pipelines.base import LoadPlan, Pipeline, Result, plan_load, resolve_settings
from edgesd.pipelines.img2img import Img2ImgPipeline
from edgesd.pipelines.inpaint import InpaintPipeline

__all__ = ["Pipeline", "Result", "LoadPlan", "plan_load", "resolve_settings", "Img2ImgPipeline", "InpaintPipeline"]
