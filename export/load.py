"""Load a diffusers SD, SD 2 or SDXL pipeline from a local folder, refusing silently re-initialised weights.

transformers/diffusers only warn when checkpoint keys do not match the module (e.g. a text encoder
saved without the `text_model.` prefix loads as random weights). An export validated against
such a module would look perfect, so every submodel is loaded with its loading info and any
missing key is an error. The pipeline class follows the folder: SDXL's when it has a second text
encoder (base, turbo) or a UNet conditioned on time ids (a refiner has no first text encoder).
"""

import json
from pathlib import Path

import diffusers
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from edgesd.errors import ModelFolderError

_TEXT_ENCODERS = {"text_encoder": ("tokenizer", CLIPTextModel), "text_encoder_2": ("tokenizer_2", CLIPTextModelWithProjection)}
_DENOISING = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}


def _is_sdxl(folder: Path) -> bool:
    return json.loads((folder / "unet/config.json").read_text()).get("addition_embed_type") == "text_time"


def load_pipeline(folder: Path) -> StableDiffusionImg2ImgPipeline | StableDiffusionXLImg2ImgPipeline:
    for required in ("model_index.json", *(f"{name}/config.json" for name in _DENOISING)):
        if not (folder / required).exists():
            raise ModelFolderError(f"{folder} is not a Stable Diffusion diffusers folder: {required} is missing")
    index = json.loads((folder / "model_index.json").read_text())
    sdxl = _is_sdxl(folder)
    encoders = [name for name in _TEXT_ENCODERS if (index.get(name) or [None])[0] and (sdxl or name == "text_encoder")]
    if not encoders:
        raise ModelFolderError(f"{folder} is not a Stable Diffusion diffusers folder: it has no text encoder")
    modules = {}
    for name in encoders:
        tokenizer, cls = _TEXT_ENCODERS[name]
        if not (folder / tokenizer).is_dir():
            raise ModelFolderError(f"{folder} is not a Stable Diffusion diffusers folder: {tokenizer}/ is missing")
        modules[name] = _load(folder, name, cls)
        modules[tokenizer] = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer)
    modules.update({name: _load(folder, name, cls) for name, cls in _DENOISING.items()})
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    modules["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    if sdxl:
        modules = {"text_encoder": None, "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None, **modules}
        return StableDiffusionXLImg2ImgPipeline(
            **modules, requires_aesthetics_score=bool(index.get("requires_aesthetics_score", False)),
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)))
    return StableDiffusionImg2ImgPipeline(**modules, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _load(folder: Path, name: str, cls):
    module, info = cls.from_pretrained(folder, subfolder=name, output_loading_info=True)
    missing = info.get("missing_keys") or []
    if missing:
        raise ModelFolderError(
            f"{folder}/{name}: {len(missing)} weights missing from the checkpoint (e.g. {sorted(missing)[0]}); "
            "they would be random. Re-save the model with the transformers/diffusers version that matches its keys."
        )
    return module.eval()
