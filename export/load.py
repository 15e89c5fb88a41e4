"""Load a diffusers SD img2img pipeline from a local folder, refusing silently re-initialised weights.

transformers/diffusers only warn when checkpoint keys do not match the module (e.g. a text encoder
saved without the `text_model.` prefix loads as random weights). An export validated against
such a module would look perfect, so every submodel is loaded with its loading info and any
missing key is an error.
"""

import json
from pathlib import Path

import diffusers
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from edgesd.errors import ModelFolderError

_SUBMODELS = {"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel, "vae": AutoencoderKL}


def load_pipeline(folder: Path) -> StableDiffusionImg2ImgPipeline:
    for required in ("model_index.json", *(f"{name}/config.json" for name in _SUBMODELS), "tokenizer"):
        if not (folder / required).exists():
            raise ModelFolderError(f"{folder} is not a Stable Diffusion diffusers folder: {required} is missing")
    if json.loads((folder / "unet/config.json").read_text()).get("addition_embed_type") == "text_time":
        raise ModelFolderError(f"{folder} is an SDXL model; edgesd supports SD 1.x/2.x architectures for now")
    modules = {}
    for name, cls in _SUBMODELS.items():
        module, info = cls.from_pretrained(folder, subfolder=name, output_loading_info=True)
        missing = info.get("missing_keys") or []
        if missing:
            raise ModelFolderError(
                f"{folder}/{name}: {len(missing)} weights missing from the checkpoint (e.g. {sorted(missing)[0]}); "
                "they would be random. Re-save the model with the transformers/diffusers version that matches its keys."
            )
        modules[name] = module.eval()
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    return StableDiffusionImg2ImgPipeline(
        **modules,
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
