"""One-file checkpoints, as model sites share them (the original SD 1.x / 2.x / SDXL layout in one
.safetensors) -> a diffusers folder the export reads, through diffusers' `from_single_file`.

The file is judged from its header alone before anything loads: a LoRA, a VAE alone, a pickle or
something else is refused by name; the family (and an inpainting UNet) is read from the weights'
names and shapes. The layout the weights do not carry (configs, tokenizers, scheduler) comes from
`config` (a diffusers folder or hub id of the same architecture) or, without it, from the released
repo diffusers infers from the weights (its configs are downloaded; offline that needs `--config`).
"""

import json
import logging
from pathlib import Path

from edgesd.errors import EdgesdError

log = logging.getLogger("edgesd")
_FAMILIES = {"conditioner.embedders.1.model.": "sdxl", "conditioner.embedders.0.model.": "sdxl",  # a refiner: OpenCLIP only
             "cond_stage_model.model.": "sd2", "cond_stage_model.transformer.": "sd1"}
_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
_PICKLES = (".ckpt", ".pt", ".pth", ".bin")


def is_single_file(spec: str) -> bool:
    return Path(spec).is_file() or Path(spec).suffix in (".safetensors", *_PICKLES)


def read_single_file(file: Path, scratch: Path, config: str | None) -> tuple[Path, str]:
    """The checkpoint `file` saved as a diffusers folder under `scratch`, and its family (sd1, sd2, sdxl)."""
    import torch

    family, shapes = _judge(file)
    inpainting = shapes[_UNET_IN][1] == 9
    layout = config or _default_layout(shapes)
    if config is not None and Path(config).is_dir():
        _check_config_fits(Path(config), family, shapes[_UNET_IN][1], file)
    import diffusers

    pipeline = diffusers.StableDiffusionXLImg2ImgPipeline if family == "sdxl" else diffusers.StableDiffusionImg2ImgPipeline
    log.info("reading %s (%s%s) with diffusers' from_single_file, layout from %s", file.name, family,
             ", inpainting" if inpainting else "", layout)
    try:
        pipe = pipeline.from_single_file(str(file), config=layout, torch_dtype=torch.float32,
                                         **({} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None,
                                                                         "requires_safety_checker": False}))
    except (OSError, ValueError) as e:
        if config is None:
            raise EdgesdError(f"{file.name} is an {family} checkpoint whose layout (configs, tokenizers) diffusers reads from "
                              f"{layout} on the hub, which failed ({str(e).splitlines()[0][:160]}); pass --config with a "
                              "local diffusers folder (or hub id) of the same architecture") from None
        raise EdgesdError(f"{file.name} does not load with the layout of {config}: {str(e).splitlines()[0][:200]}; "
                          "is --config of the same architecture?") from None
    folder = scratch / "single-file"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder, family


def _judge(file: Path) -> tuple[str, dict[str, list[int]]]:
    """(family, weight name -> shape) of a checkpoint, from its header; anything else is refused by name."""
    if file.suffix in _PICKLES:
        raise EdgesdError(f"{file.name} is a pickled checkpoint, which can run code when loaded; edgesd reads .safetensors "
                          "checkpoints only (most model sites offer one)")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgesdError(f"{file.name} cannot be read as safetensors: {str(e).splitlines()[0][:200]}") from None
    if any("lora_" in key or ".lora." in key or key.endswith(".alpha") for key in shapes):
        raise EdgesdError(f"{file.name} is a LoRA, not a checkpoint: give it at run time with --lora (loras= in Python)")
    if _UNET_IN not in shapes:
        if any(key.startswith(("encoder.", "decoder.", "first_stage_model.")) for key in shapes):
            raise EdgesdError(f"{file.name} is a VAE alone, not a whole checkpoint; export the model it belongs to")
        raise EdgesdError(f"{file.name} is not a Stable Diffusion checkpoint (no model.diffusion_model UNet weights)")
    family = next((family for prefix, family in _FAMILIES.items() if any(k.startswith(prefix) for k in shapes)), None)
    if family is None:
        raise EdgesdError(f"{file.name} has a UNet but no text encoder edgesd knows (SD 1.x, 2.x or SDXL); it is not "
                          "a Stable Diffusion checkpoint edgesd exports")
    return family, shapes


def _default_layout(shapes: dict[str, list[int]]) -> str:
    """The released repo diffusers infers from the weights (diffusers' own rules read names and shapes only)."""
    import torch
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    shaped = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    return fetch_diffusers_config(shaped)["pretrained_model_name_or_path"]


def _check_config_fits(config: Path, family: str, in_channels: int, file: Path) -> None:
    """A local --config of another family or UNet kind is refused before diffusers tries it."""
    try:
        unet = json.loads((config / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        raise EdgesdError(f"--config {config} is not a diffusers folder (no unet/config.json)") from None
    theirs = "sdxl" if unet.get("addition_embed_type") == "text_time" else "sd"
    if theirs != ("sdxl" if family == "sdxl" else "sd") or unet.get("in_channels", 4) != in_channels:
        raise EdgesdError(f"--config {config.name} is an {theirs} model with a {unet.get('in_channels', 4)}-channel UNet; "
                          f"{file.name} is an {family} checkpoint with a {in_channels}-channel UNet")
