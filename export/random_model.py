"""Random-weight diffusers pipelines built from a recipe, saved as released repos are.

Tests and CI cannot reach a model hub, so they build small models from the configs in
models/recipes and save them with `save_pretrained` (tokenizer as vocab.json + merges.txt, text
encoder keys with the `text_model.` prefix); export then reads them like any downloaded repo.
"""

from pathlib import Path

import diffusers
import torch
from diffusers import (AutoencoderKL, AutoencoderTiny, ControlNetModel, StableDiffusionImg2ImgPipeline,
                       StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from edgesd.export import recipes
from edgesd.export.tokenizer import write_clip_tokenizer


def build_random_pipeline(recipe: dict, folder: Path) -> None:
    """Build the recipe's pipeline with weights drawn from its fixed seed and save it to `folder`: an SD
    img2img pipeline, or an SDXL one where the recipe has a second text encoder (with its projection)."""
    torch.manual_seed(recipe.get("seed", 0))
    modules = {}
    if "text_encoder" in recipe:
        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig(**recipe["text_encoder"])).eval()
        modules["tokenizer"] = write_clip_tokenizer(folder / "tokenizer", **recipe["tokenizer"])
    if "text_encoder_2" in recipe:
        modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**recipe["text_encoder_2"])).eval()
        modules["tokenizer_2"] = write_clip_tokenizer(folder / "tokenizer_2", **recipe["tokenizer_2"])
    modules["unet"] = UNet2DConditionModel(**recipe["unet"]).eval()
    modules["vae"] = AutoencoderKL(**recipe["vae"]).eval()
    modules["scheduler"] = getattr(diffusers, recipe["scheduler"]["_class_name"]).from_config(recipe["scheduler"])
    if "text_encoder_2" in recipe:  # a refiner has no first text encoder
        modules = {"text_encoder": None, "tokenizer": None, **modules}
        pipe = StableDiffusionXLImg2ImgPipeline(**modules, **recipe.get("pipeline", {}))
    else:
        pipe = StableDiffusionImg2ImgPipeline(**modules, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def build_random_tiny_vae(recipe: dict, folder: Path) -> None:
    """A tiny VAE (AutoencoderTiny, as TAESD) with weights drawn from the recipe's seed, saved to `folder`."""
    torch.manual_seed(recipe.get("seed", 0))
    AutoencoderTiny(**recipe["vae"]).eval().save_pretrained(folder, safe_serialization=True)


def build_random_controlnet(recipe: dict, folder: Path) -> None:
    """A ControlNet with weights drawn from the recipe's seed, saved to `folder`. diffusers zeroes a new
    ControlNet's output convolutions (its residuals start at zero, as training wants), which would let
    a miswired ControlNet pass any test: they are drawn at random too."""
    torch.manual_seed(recipe.get("seed", 0))
    controlnet = ControlNetModel(**recipe["controlnet"]).eval()
    zeroed = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zeroed:
            torch.nn.init.normal_(conv.weight, std=1.0 / conv.weight[0].numel() ** 0.5)
            torch.nn.init.normal_(conv.bias, std=0.02)
    controlnet.save_pretrained(folder, safe_serialization=True)


def build_random_depth_estimator(recipe: dict, folder: Path) -> None:
    """A DPT depth estimator and its image processor, saved to `folder` as released repos are. Its weights
    are drawn at fan-in scale (transformers' init leaves a depth of ~1e-9, which any export would match)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(recipe.get("seed", 0))
    model = DPTForDepthEstimation(DPTConfig(**recipe["model"])).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                torch.nn.init.normal_(module.weight, std=1.0 / module.weight[0].numel() ** 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(**recipe["processor"]).save_pretrained(folder)


def random_source(spec: str, folder: Path) -> dict:
    """`random:NAME` -> build the recipe NAME (a pipeline, a tiny VAE, a ControlNet or a depth estimator) into
    `folder`; returns the recipe."""
    recipe = recipes.load(spec.removeprefix("random:"))
    build = {"vae": build_random_tiny_vae, "controlnet": build_random_controlnet,
             "depth": build_random_depth_estimator}.get(recipe.get("kind"), build_random_pipeline)
    build(recipe, folder)
    return recipe
