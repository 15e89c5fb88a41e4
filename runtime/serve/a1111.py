"""AUTOMATIC1111's web UI API, for what edgesd does: its img2img request (names and defaults as A1111's
API has them), turned into edgesd pipeline calls, and its response (images, the request echoed, the
`info` JSON string with A1111's keys and infotexts).

A batch (batch_size x n_iter) runs one call per image with seed + i, A1111's rule, so each image is
reproducible alone from its entry in `all_seeds`. Fields A1111 has and edgesd does not apply are named
in info["edgesd"]["ignored"] when given a value other than A1111's no-op default; scripts are refused.
"""

import base64
import binascii
import json
from typing import Literal

from PIL import Image, ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from edgesd import __version__, schedulers
from edgesd.errors import InvalidInputError
from edgesd.image import decode_image
from edgesd.limits import MAX_GUIDANCE, MAX_IMAGES, MAX_SIDE, MAX_STEPS

# A1111 fields edgesd does not apply -> the values that change nothing (not worth a mention)
_NO_OPS = {"restore_faces": (False, None), "tiling": (False, None), "styles": ([], None), "subseed": (-1, 0, None),
           "subseed_strength": (0, 0.0, None), "seed_resize_from_h": (-1, 0, None), "seed_resize_from_w": (-1, 0, None),
           "eta": (1.0, 0, None), "s_churn": (0, 0.0, None), "s_tmax": (0, 0.0, None), "s_tmin": (0, 0.0, None),
           "s_noise": (1, 1.0, None), "do_not_save_samples": (False, True, None), "do_not_save_grid": (False, True, None),
           "image_cfg_scale": (1.5, None), "initial_noise_multiplier": (1, 1.0, None), "override_settings_restore_afterwards":
           (True, False, None), "script_args": ([], None), "send_images": (True,), "save_images": (False, True),
           "controlnet_units": ([], None), "alwayson_scripts": ({},)}
KARRAS_SCHEDULES = ("karras",)
AUTOMATIC = ("automatic", "")


class Img2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    init_images: list[str] = Field(min_length=1, max_length=1)
    prompt: str = Field("", max_length=10_000)
    negative_prompt: str = Field("", max_length=10_000)
    denoising_strength: float = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    seed: int = Field(-1, ge=-1, le=2**64 - 1)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
    width: int = Field(512, ge=8, le=MAX_SIDE)
    height: int = Field(512, ge=8, le=MAX_SIDE)
    resize_mode: Literal[0, 1, 2, 3] = 0
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES)
    mask: str | None = None
    mask_blur: int = Field(4, ge=0, le=256)
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: Literal[0, 1] = 0
    inpainting_fill: Literal[0, 1, 2, 3] = 0  # masked content: fill (A1111's default), original, latent noise, latent nothing
    include_init_images: bool = False
    override_settings: dict = {}
    script_name: str | None = None
    alwayson_scripts: dict = {}


def decode(data: str, what: str, max_pixels: int) -> Image.Image:
    """Base64 (with or without a data: prefix) -> an RGB image, or InvalidInputError naming `what`."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{what} is not base64") from None
    return decode_image(raw, max_pixels, what)


def sampler_of(request: Img2ImgRequest) -> str | None:
    """The scheduler edgesd runs for A1111's sampler_name (sampler_index, its older name) and schedule type."""
    name = request.sampler_name or request.sampler_index
    if name is None:
        return None
    schedule = (request.scheduler or "").strip().lower()
    if schedule not in (*AUTOMATIC, *KARRAS_SCHEDULES):
        raise InvalidInputError(f"scheduler (schedule type) {request.scheduler!r}: edgesd runs Automatic or Karras")
    wanted = f"{name} Karras" if schedule in KARRAS_SCHEDULES and not name.lower().endswith("karras") else name
    if schedulers.sampler(wanted) is None:
        raise InvalidInputError(f"unknown sampler {wanted!r}; samplers: {', '.join(schedulers.SAMPLERS)}")
    return wanted


def refused(request: Img2ImgRequest) -> str | None:
    if request.script_name:
        return f"scripts are not supported (script_name {request.script_name!r})"
    if request.alwayson_scripts:
        return f"alwayson_scripts are not supported ({', '.join(map(str, request.alwayson_scripts))})"
    return None


def ignored(request: Img2ImgRequest) -> list[str]:
    """Fields given that edgesd does not apply, with a value that would change A1111's result."""
    return sorted(name for name, value in (request.model_extra or {}).items()
                  if name not in _NO_OPS or (_NO_OPS[name] is not None and value not in _NO_OPS[name]))


def resized(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """A1111's resize modes: 0 (and 3) just resize, 1 crop and resize (cover, centred), 2 resize and fill
    (fit, the bands filled with the image's edges stretched)."""
    if mode == 1:
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if mode == 2:
        fitted = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
        canvas = image.resize((width, height), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(8))
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.LANCZOS) if image.size != (width, height) else image


def infotext(request: Img2ImgRequest, seed: int, sampler: str, model: str, size: tuple[int, int]) -> str:
    """A1111's one-image parameter text (what its PNG info shows and its UI pastes back)."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(f"Steps: {request.steps}, Sampler: {sampler}, CFG scale: {request.cfg_scale:g}, Seed: {seed}, "
                 f"Size: {size[0]}x{size[1]}, Model: {model}, Denoising strength: {request.denoising_strength:g}, "
                 f"Version: edgesd {__version__}")
    return "\n".join(lines)


def info(request: Img2ImgRequest, all_seeds: list[int], sampler: str, model: str, model_hash: str, texts: list[str],
         interrupted: bool) -> str:
    return json.dumps({
        "prompt": request.prompt, "all_prompts": [request.prompt] * len(texts), "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(texts), "seed": all_seeds[0], "all_seeds": all_seeds[:len(texts)],
        "subseed": -1, "all_subseeds": [-1] * len(texts), "subseed_strength": 0, "width": request.width, "height": request.height,
        "sampler_name": sampler, "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": False, "sd_model_name": model, "sd_model_hash": model_hash, "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "denoising_strength": request.denoising_strength, "extra_generation_params": {},
        "index_of_first_image": 0, "infotexts": texts, "styles": [], "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": f"edgesd {__version__}",
        "edgesd": {"ignored": ignored(request), "interrupted": interrupted},
    })


def prepared_mask(request: Img2ImgRequest, size: tuple[int, int], max_pixels: int) -> Image.Image | None:
    """The request's mask as an "L" image of the output's size: resized as the image is, inverted if asked,
    blurred by mask_blur (the denoising binarises it at half; the result is overlaid through it, as A1111)."""
    if request.mask is None:
        return None
    mask = resized(decode(request.mask, "mask", max_pixels), *size, request.resize_mode).convert("L")
    if request.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    return mask.filter(ImageFilter.GaussianBlur(request.mask_blur)) if request.mask_blur else mask


MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # by inpainting_fill


def echoed(request: Img2ImgRequest) -> dict:
    """The request as A1111 echoes it in `parameters`: the images left out unless include_init_images."""
    parameters = request.model_dump()
    if not request.include_init_images:
        parameters["init_images"], parameters["mask"] = None, None
    return parameters
