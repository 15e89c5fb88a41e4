"""Depth estimators for depth control maps: a transformers depth-estimation model (DPT: Intel/dpt-large,
Intel/dpt-hybrid-midas, the model transformers' depth-estimation pipeline and diffusers' depth ControlNet
docs use) -> a depth estimator folder (kind "depth": its graph in ONNX and/or OpenVINO IR through
optimum's exporter, validated against torch, and its image processor's settings, which
edgesd.control.depth applies torch-free).

Depth Anything is not exported: transformers' head computes its output size with int() of the patch
grid, which a traced graph keeps as a constant, so any other input size would come out wrong.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch

from edgesd.errors import EdgesdError, ModelFolderError
from edgesd.model_folder import FORMAT_VERSION

log = logging.getLogger("edgesd")
SUBMODEL = "depth_estimator"
_EXPORTED = ("dpt",)  # model types optimum exports for depth-estimation with a size-following graph
_PROCESSING = ("do_resize", "size", "keep_aspect_ratio", "ensure_multiple_of", "resample", "do_rescale", "rescale_factor",
               "do_normalize", "image_mean", "image_std", "do_pad", "size_divisor")


def is_depth_estimator(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and any(a.endswith("ForDepthEstimation") for a in json.loads(config.read_text()).get("architectures") or ())


def export_depth_estimator(source, folder: Path, formats) -> tuple[dict, dict]:
    """Export the depth estimator in `source` into `folder` in fp32; returns its manifest and the
    validation references ({"depth_estimator": (torch output, feeds)})."""
    from optimum.exporters.onnx import export_models
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from edgesd.export import _convert_and_validate, _files, _provenance, support_files

    model_type = json.loads((source.folder / "config.json").read_text()).get("model_type")
    if model_type not in _EXPORTED:
        raise EdgesdError(f"{source.spec}: a {model_type} depth estimator cannot be exported yet (its traced graph would "
                          "fix the output size); export a DPT one: Intel/dpt-hybrid-midas or Intel/dpt-large")
    model, info = AutoModelForDepthEstimation.from_pretrained(source.folder, output_loading_info=True)
    if info.get("missing_keys"):
        raise ModelFolderError(f"{source.folder}: {len(info['missing_keys'])} weights missing from the checkpoint; "
                               "they would be random")
    model.eval()
    processor = AutoImageProcessor.from_pretrained(source.folder, use_fast=False)
    constructor = TasksManager.get_exporter_config_constructor(model=model, exporter="onnx", task="depth-estimation",
                                                               library_name="transformers")
    log.info("exporting the depth estimator to ONNX with optimum")
    with torch.no_grad():
        export_models(models_and_onnx_configs={SUBMODEL: (model, constructor(model.config))}, output_dir=folder,
                      output_names=[f"{SUBMODEL}/model.onnx"])
    model.config.save_pretrained(folder / SUBMODEL)
    processor.save_pretrained(folder / SUBMODEL)
    references = _references(model, processor)
    validation = _convert_and_validate(folder, formats, {SUBMODEL: references})
    processing = {name: getattr(processor, name) for name in _PROCESSING if hasattr(processor, name)}
    processing["resample"] = int(processing["resample"])
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "depth",
        "depth": processing,
        "submodels": {SUBMODEL: {"formats": {fmt: {"precision": "fp32", "files": _files(folder / SUBMODEL, fmt)} for fmt in formats},
                                 "validation_max_abs_deviation": validation[SUBMODEL]}},
        "support_files": support_files(folder),
        "provenance": _provenance(source, formats),
    }
    return manifest, {SUBMODEL: references}


def _references(model, processor) -> tuple[dict, dict]:
    """Torch's depth for a random input at the processor's size (DPT's ViT reads square inputs only)."""
    size = processor.size["height"]
    feeds = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)}
    with torch.no_grad():
        depth = model(pixel_values=torch.from_numpy(feeds["pixel_values"])).predicted_depth
    return {"predicted_depth": depth.numpy()}, feeds
