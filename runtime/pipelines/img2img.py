"""Img2ImgPipeline: Stable Diffusion image-to-image on onnxruntime or OpenVINO, torch-free.

Follows diffusers' StableDiffusionImg2ImgPipeline step for step (same preprocessing, same random
draws in the same order, same guidance rule), so an fp32 export reproduces diffusers' CPU output
for the same seed.
"""

import hashlib
import time

import numpy as np

from edgesd.denoise import Callback
from edgesd.errors import InvalidInputError
from edgesd.image import image_sha256, load_image, preprocess
from edgesd.pipelines.base import Pipeline, Preparation, Result, resolve_settings


class Img2ImgPipeline(Pipeline):
    task = "img2img"
    control_scale = 0.8  # StableDiffusionControlNetImg2ImgPipeline's

    @classmethod
    def check_folder(cls, folder) -> None:
        channels = folder.unet_config.get("in_channels", 4)
        if channels != folder.manifest["latent_channels"]:
            raise InvalidInputError(f"{folder.name} is an inpainting model ({channels}-channel UNet): use InpaintPipeline "
                                    "(edgesd inpaint / outpaint)")

    def __call__(
        self,
        image,
        prompt: str,
        negative_prompt: str | None = None,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        callback: Callback | None = None,
        size: tuple[int | None, int | None] | None = None,
        output_type: str = "pil",
        control_image=None,
        **options,
    ) -> Result:
        """`image`: a path, PIL image or array of pixels, or latents ((1 or num_images, channels, h, w)
        float32, e.g. a base model's `output_type="latent"` result for a refiner's `denoising_start`).
        `size`: (width, height) to resize the input to first; one side None keeps the aspect ratio.
        `control_image`: with ControlNets loaded, one image each (a path, PIL image or array; a list for
        several), resized to the output size.
        `options`: the model family's own, by diffusers' names (SDXL: prompt_2, negative_prompt_2,
        original_size, target_size, crops_coords_top_left, their negative_ forms, aesthetic_score,
        negative_aesthetic_score), and diffusers' ControlNet options: controlnet_conditioning_scale
        (0.8; a list: one per ControlNet), guess_mode, control_guidance_start, control_guidance_end."""
        self.check_folder(self.folder)
        start = time.perf_counter()
        # 1. Check inputs; None means the model folder's recommended default.
        settings, plan = resolve_settings(self.folder, prompt, negative_prompt, strength, num_inference_steps, guidance_scale,
                                          seed, num_images, scheduler, None, len(self.controlnets), self.control_scale, **options)
        given = self._latents(image, settings["num_images"])
        if given is None:
            image = load_image(image, self.max_pixels)
            width, height = self.input_size(image.size, size)
            provenance = {**self.provenance, "input_sha256": image_sha256(image)}
        else:
            height, width = (side * self.vae.scale_factor for side in given.shape[2:])
            provenance = {**self.provenance, "input_sha256": hashlib.sha256(given.tobytes()).hexdigest()}
        settings["size"] = [width, height]

        def prepare(generator) -> Preparation:
            # 3. The image's latents (sampled from its latent distribution), noised to the strength's start
            # (given latents are taken as they are; after a base's denoising_end, not noised again).
            latents = self.encode_image(preprocess(image, (width, height)), generator) if given is None else given
            latents = np.repeat(latents, settings["num_images"], axis=0) if len(latents) < settings["num_images"] else latents
            if len(plan.timesteps) and settings.get("denoising_start") is None:
                latents = plan.add_noise(latents, generator.randn(latents.shape))
            return Preparation(latents)

        # 2. Encode the prompt, 3. prepare, 4. denoise, 5. decode: the skeleton every task shares.
        return self.generate(start, settings, plan, (width, height), provenance, prepare, callback, output_type, control_image)

    def _latents(self, image, num_images: int) -> np.ndarray | None:
        """`image` as latents when it is a 4-D array (else None: pixels)."""
        if not isinstance(image, np.ndarray) or image.ndim != 4:
            return None
        if image.shape[1] != self.latent_channels or len(image) not in (1, num_images) or not np.isfinite(image).all():
            raise InvalidInputError(f"latents must be (1 or num_images, {self.latent_channels}, h, w) finite float32; "
                                    f"got {image.shape}")
        return image.astype(np.float32)


def refine(base: Img2ImgPipeline, refiner: Img2ImgPipeline, image, prompt: str, high_noise_frac: float = 0.8,
           callback: Callback | None = None, **call) -> Result:
    """diffusers' "ensemble of expert denoisers": the base denoises the first `high_noise_frac` of
    the schedule (denoising_end) and hands its latents, undecoded, to the refiner, which denoises the
    rest (denoising_start) with the same prompt, steps, guidance and seed, and decodes. `call`: the
    options both take (strength sets where the base starts). The result's settings are the base's
    call with high_noise_frac; its provenance the refiner's, naming it."""
    if call.pop("denoising_start", None) is not None or call.pop("denoising_end", None) is not None:
        raise InvalidInputError("refine sets denoising_end and denoising_start itself, from high_noise_frac")
    first = base(image, prompt, denoising_end=high_noise_frac, output_type="latent", callback=callback, **call)
    if first.cancelled:
        return first
    result = refiner(first.latents, prompt, denoising_start=high_noise_frac, callback=callback, **{**call, "seed": first.seed})
    result.settings = {**{k: v for k, v in first.settings.items() if k != "denoising_end"}, "high_noise_frac": high_noise_frac}
    result.provenance.update(input_sha256=first.provenance["input_sha256"],
                             refiner={"model": refiner.provenance["model"], "manifest_sha256": refiner.folder.manifest_sha256})
    for key, value in first.timings.items():  # both stages: seconds summed, steps listed
        result.timings[key] = value + result.timings.get(key, [] if key == "steps" else 0)
    return result
