"""Task pipelines, one module each, on the shared layer in base.py (see DESIGN.md)."""

from edgesd.pipelines.base import (LoadPlan, Pipeline, Result, check_memory, outpaint_canvas, plan_load, processing_size,
                                   resolve_settings)
from edgesd.pipelines.img2img import Img2ImgPipeline
from edgesd.pipelines.inpaint import InpaintPipeline

__all__ = ["Pipeline", "Result", "LoadPlan", "plan_load", "resolve_settings", "processing_size", "outpaint_canvas",
           "check_memory", "Img2ImgPipeline", "InpaintPipeline"]
