"""A diffusers AutoencoderTiny (TAESD: madebyollin/taesd for SD 1.x/2.x, madebyollin/taesdxl for SDXL;
their recipes name the family, recorded so a misfit is refused by name) -> a VAE folder that
pipelines load with `vae=` / `--vae`: vae_encoder/ and vae_decoder/ in ONNX (optimum's VAE export
configs, told the tiny VAE's block counts) and/or OpenVINO IR, each validated against torch, and an
edgesd.json of kind "vae". Its encoder gives latents directly (no distribution to sample)."""

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from edgesd.errors import ModelFolderError
from edgesd.model_folder import FORMAT_VERSION, VAE_SUBMODELS

log = logging.getLogger("edgesd")


def is_tiny_vae(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderTiny"


def export_tiny_vae(source, folder: Path, formats) -> dict:
    """Export into `folder` and return its manifest."""
    from diffusers import AutoencoderTiny
    from optimum.exporters.onnx import export_models
    from optimum.exporters.tasks import TasksManager

    from edgesd.export import _convert_and_validate, _files, _provenance, support_files

    vae, info = AutoencoderTiny.from_pretrained(source.folder, output_loading_info=True)
    if info.get("missing_keys"):
        raise ModelFolderError(f"{source.folder}: {len(info['missing_keys'])} weights missing from the checkpoint; they would be random")
    vae.eval()
    config = vae.config
    scale_factor = 2 ** (len(config.encoder_block_out_channels) - 1)
    if scale_factor != config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1):
        raise ModelFolderError(f"{source.folder}: the tiny VAE's encoder and decoder scale by different factors")
    # optimum's VAE configs read the block counts (down/up_block_types) for the latent axes' names,
    # and sample_size for the dummy inputs the graph is traced with (any size works after export)
    described = SimpleNamespace(**config, down_block_types=[None] * len(config.encoder_block_out_channels),
                                up_block_types=[None] * len(config.decoder_block_out_channels), sample_size=8 * scale_factor)
    encoder, decoder = copy.deepcopy(vae), copy.deepcopy(vae)
    encoder.forward = lambda sample: {"latent_parameters": encoder.encode(sample).latents}
    decoder.forward = lambda latent_sample: decoder.decode(latent_sample)
    models = {}
    for name, model, kind in (("vae_encoder", encoder, "vae-encoder"), ("vae_decoder", decoder, "vae-decoder")):
        make_config = TasksManager.get_exporter_config_constructor(model=model, exporter="onnx", library_name="diffusers",
                                                                   task="semantic-segmentation", model_type=kind)
        models[name] = (model, make_config(described, int_dtype="int64", float_dtype="fp32"))
    log.info("exporting the tiny VAE to ONNX with optimum")
    export_models(models_and_onnx_configs=models, output_dir=folder, output_names=[f"{n}/model.onnx" for n in models])
    for name in VAE_SUBMODELS:
        vae.save_config(folder / name)
    validation = _convert_and_validate(folder, formats, _references(vae, config.latent_channels, scale_factor))
    family = {"family": source.recipe["family"]} if source.recipe.get("family") else {}  # which models' latents it fits
    return {
        "format_version": FORMAT_VERSION,
        "kind": "vae",
        **family,
        "vae_encoder_output": "latents",  # not a distribution: nothing to sample
        "latent_channels": config.latent_channels,
        "vae_scaling_factor": config.scaling_factor,
        "vae_scale_factor": scale_factor,
        "submodels": {name: {"formats": {fmt: {"precision": "fp32", "files": _files(folder / name, fmt)} for fmt in formats},
                             "validation_max_abs_deviation": validation[name]} for name in VAE_SUBMODELS},
        "support_files": support_files(folder),
        "provenance": _provenance(source, formats),
    }


def _references(vae, latent_channels: int, scale_factor: int) -> dict:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (1, 3, 12 * scale_factor, 8 * scale_factor)).astype(np.float32)
    latents = rng.standard_normal((1, latent_channels, 12, 8), dtype=np.float32)
    with torch.no_grad():
        return {"vae_encoder": ({"latent_parameters": vae.encode(torch.from_numpy(pixels)).latents.numpy()}, {"sample": pixels}),
                "vae_decoder": ({"sample": vae.decode(torch.from_numpy(latents)).sample.numpy()}, {"latent_sample": latents})}
