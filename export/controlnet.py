"""ControlNets for export: a diffusers ControlNetModel -> a ControlNet folder (kind "controlnet": its
graph in ONNX and/or OpenVINO IR, validated output by output against torch, and what it fits), and the
UNet traced with ControlNet residual inputs, so every model folder exported since takes them.

Both go through optimum's exporter (export_models) with configs derived from its UNet config: ONNX
takes no lists, so the residuals are flat named tensors, `down_block_additional_residual_<i>` and
`mid_block_additional_residual` on the UNet, `down_block_res_sample_<i>` and `mid_block_res_sample`
out of the ControlNet. The ControlNet is traced at conditioning scale 1 (the runtime scales its
outputs, as diffusers' per-block guess-mode scales, in numpy); its channel order (BGR) and global
pooling are in its graph. A UNet fed no ControlNet gets a (1, 1, 1, 1) zero per residual input, which
its additions broadcast: no memory, and the same output as without the inputs.
"""

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import torch

from edgesd.errors import ModelFolderError
from edgesd.model_folder import FORMAT_VERSION
from edgesd.models.controlnet import DOWN_OUTPUT, MID_OUTPUT, residual_count, residual_names

log = logging.getLogger("edgesd")
_FAMILY_BY_CROSS_ATTENTION = {768: "sd1", 1024: "sd2"}


def is_controlnet(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "ControlNetModel"


def _named_forward(parameters: list[str], call):
    """A forward taking `parameters` by name (optimum orders and checks inputs by the signature)."""
    signature = inspect.Signature([inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
                                   for p in parameters])

    def forward(*args, **kwargs):
        return call(**signature.bind(*args, **kwargs).arguments)

    forward.__signature__ = signature
    return forward


def _sdxl(config) -> bool:
    return config.get("addition_embed_type") == "text_time"


def _onnx_config(base_config, inputs: dict, outputs: dict, dummies):
    """optimum's UNet ONNX config with other inputs and outputs (dummies(base dummy inputs) adds the new ones)."""

    class Config(type(base_config)):
        @property
        def inputs(self):
            return inputs

        @property
        def outputs(self):
            return outputs

        @property
        def torch_to_onnx_output_map(self):
            return {}

        def generate_dummy_inputs(self, framework: str = "pt", **kwargs):
            dummy = base_config.generate_dummy_inputs(framework=framework, **kwargs)
            dummy.update(dummy.pop("added_cond_kwargs", {}))
            return dummies(dummy)

        def ordered_inputs(self, model):
            return inputs

    config = Config.__new__(Config)
    config.__dict__.update(base_config.__dict__)
    return config


def _residual_axes(names: list[str]) -> dict:
    """Every axis of each residual its own (a (1, 1, 1, 1) zero broadcasts)."""
    return {name: {axis: f"{name}_{axis}" for axis in range(4)} for name in names}


def _residual_shapes(unet_config, batch: int, height: int, width: int) -> list[tuple]:
    """The shapes of the down residuals and the mid one for latents of height x width."""
    channels = unet_config["block_out_channels"]
    layers = unet_config["layers_per_block"]
    shapes = [(batch, channels[0], height, width)]
    for level, level_channels in enumerate(channels):
        shapes += [(batch, level_channels, height, width)] * (layers[level] if isinstance(layers, list) else layers)
        if level < len(channels) - 1:  # a stride-2 convolution: ceil(side / 2)
            height, width = -(-height // 2), -(-width // 2)
            shapes.append((batch, level_channels, height, width))
    return shapes + [(batch, channels[-1], height, width)]


def unet_with_residuals(unet, onnx_config):
    """(the UNet taking named residual inputs, its optimum ONNX config) for export_models."""
    count = residual_count(unet.config)
    sdxl = _sdxl(unet.config)
    original = unet.forward
    residuals = residual_names(count)
    names = ["sample", "timestep", "encoder_hidden_states", *(["text_embeds", "time_ids"] if sdxl else []), *residuals]

    def call(sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, **given):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if sdxl else None
        return (original(sample, timestep, encoder_hidden_states, added_cond_kwargs=added,
                         down_block_additional_residuals=[given[name] for name in residuals[:-1]],
                         mid_block_additional_residual=given[residuals[-1]]).sample,)

    unet.forward = _named_forward(names, call)
    inputs = {**onnx_config.inputs, **_residual_axes(residuals)}

    def dummies(dummy):
        sample = dummy["sample"]
        shapes = _residual_shapes(unet.config, sample.shape[0], *sample.shape[2:])
        dummy.update({name: torch.randn(shape) for name, shape in zip(residuals, shapes)})
        return dummy

    return unet, _onnx_config(onnx_config, {name: inputs[name] for name in names}, onnx_config.outputs, dummies)


def residual_feeds(unet_config, rng, batch: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Random residual inputs of the right shapes (export validation: a miswired input shows)."""
    names = residual_names(residual_count(unet_config))
    return {name: rng.standard_normal(shape, dtype=np.float32)
            for name, shape in zip(names, _residual_shapes(unet_config, batch, height, width))}


# -- the ControlNet folder ------------------------------------------------------------------------------

def export_controlnet(source, folder: Path, formats) -> tuple[dict, dict]:
    """Export the ControlNet in `source` into `folder` in fp32; returns its manifest and the validation
    references ({"controlnet": (torch outputs, feeds)}: quantize_folder measures a precision's deviation on them)."""
    from diffusers import ControlNetModel
    from optimum.exporters.onnx import export_models
    from optimum.exporters.tasks import TasksManager

    from edgesd.export import _convert_and_validate, _files, _provenance, support_files

    controlnet, info = ControlNetModel.from_pretrained(source.folder, output_loading_info=True)
    if info.get("missing_keys"):
        raise ModelFolderError(f"{source.folder}: {len(info['missing_keys'])} weights missing from the checkpoint; "
                               "they would be random")
    controlnet.eval()
    config = controlnet.config
    sdxl = _sdxl(config)
    count = residual_count(config)
    scale_factor = 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    names = ["sample", "timestep", "encoder_hidden_states", "controlnet_cond", *(["text_embeds", "time_ids"] if sdxl else [])]
    original = controlnet.forward

    def call(sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if sdxl else None
        down, mid = original(sample, timestep, encoder_hidden_states, controlnet_cond, added_cond_kwargs=added,
                               return_dict=False)
        return (*down, mid)

    unet_config = TasksManager.get_exporter_config_constructor(model=controlnet, exporter="onnx", library_name="diffusers",
                                                               task="semantic-segmentation", model_type="unet-2d-condition")
    base = unet_config(_described(config), int_dtype="int64", float_dtype="fp32")
    inputs = {**base.inputs, "controlnet_cond": {0: "batch_size", 2: "image_height", 3: "image_width"}}
    outputs = [DOWN_OUTPUT.format(i) for i in range(count)] + [MID_OUTPUT]

    def dummies(dummy):
        batch, _, height, width = dummy["sample"].shape
        dummy["controlnet_cond"] = torch.rand(batch, config.conditioning_channels, height * scale_factor, width * scale_factor)
        return dummy

    controlnet.forward = _named_forward(names, call)
    onnx_config = _onnx_config(base, {name: inputs[name] for name in names}, _residual_axes(outputs), dummies)
    log.info("exporting the ControlNet to ONNX with optimum")
    with torch.no_grad():
        export_models(models_and_onnx_configs={"controlnet": (controlnet, onnx_config)}, output_dir=folder,
                      output_names=["controlnet/model.onnx"])
    controlnet.save_config(folder / "controlnet")
    references = _references(controlnet, config, names, outputs, scale_factor)
    validation = _convert_and_validate(folder, formats, {"controlnet": references})
    fits = {
        "cross_attention_dim": config.cross_attention_dim,
        "block_out_channels": list(config.block_out_channels),
        "residuals": count,
        "vae_scale_factor": scale_factor,
        "conditioning_channels": config.conditioning_channels,
        "conditioning_channel_order": config.controlnet_conditioning_channel_order,  # applied in its graph
        "global_pool_conditions": bool(config.global_pool_conditions),  # guess mode always, as diffusers
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "controlnet",
        "family": source.recipe.get("family") or ("sdxl" if sdxl else _FAMILY_BY_CROSS_ATTENTION.get(config.cross_attention_dim, "sd")),
        "controlnet": fits,
        "submodels": {"controlnet": {"formats": {fmt: {"precision": "fp32", "files": _files(folder / "controlnet", fmt)}
                                                 for fmt in formats},
                                     "validation_max_abs_deviation": validation["controlnet"]}},
        "support_files": support_files(folder),
        "provenance": _provenance(source, formats),
    }
    return manifest, {"controlnet": references}


def _described(config):
    """The ControlNet's config as optimum's UNet config reads it (sample size: the dummy latents' side;
    SDXL: the pooled text embeddings' width, what is left of the added embedding after six time ids)."""
    from types import SimpleNamespace

    described = {**config, "sample_size": 8, "out_channels": config.in_channels}
    if _sdxl(config):
        described["text_encoder_projection_dim"] = _pooled_width(config)
    return SimpleNamespace(**described)


def _pooled_width(config) -> int:
    return config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim


def _references(controlnet, config, names: list[str], outputs: list[str], scale_factor: int) -> tuple[dict, dict]:
    """Torch's outputs on random inputs (non-square, guidance's batch of 2) and the engine feeds."""
    rng = np.random.default_rng(0)
    height, width = 12, 8
    feeds = {"sample": rng.standard_normal((2, config.in_channels, height, width), dtype=np.float32),
             "timestep": np.asarray(np.float32(501.0)),
             "encoder_hidden_states": rng.standard_normal((2, 77, config.cross_attention_dim), dtype=np.float32),
             "controlnet_cond": rng.uniform(0, 1, (2, config.conditioning_channels, height * scale_factor,
                                                    width * scale_factor)).astype(np.float32)}
    if _sdxl(config):
        feeds["text_embeds"] = rng.standard_normal((2, _pooled_width(config)), dtype=np.float32)
        feeds["time_ids"] = np.array([[96, 64, 0, 0, 96, 64]] * 2, np.float32)
    with torch.no_grad():
        got = controlnet(**{name: torch.from_numpy(feeds[name]) for name in names})
    return {name: value.numpy() for name, value in zip(outputs, got)}, feeds
