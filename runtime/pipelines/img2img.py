"""Img2ImgPipeline: Stable Diffusion image-to-image on onnxruntime or OpenVINO, torch-free.

Follows diffusers' StableDiffusionImg2ImgPipeline step for step (same preprocessing, same random
draws in the same order, same guidance rule), so an fp32 export reproduces diffusers' CPU output
for the same seed.
"""

import time

import numpy as np

from edgesd.denoise import Callback
from edgesd.errors import InvalidInputError
from edgesd.image import image_sha256, load_image, preprocess
from edgesd.pipelines.base import Pipeline, Preparation, Result, resolve_settings


class Img2ImgPipeline(Pipeline):
    task = "img2img"

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
    ) -> Result:
        """`size`: (width, height) to resize the input to first; one side None keeps the aspect ratio."""
        if self.unet.in_channels != self.latent_channels:
            raise InvalidInputError(f"{self.folder.name} is an inpainting model ({self.unet.in_channels}-channel UNet): "
                                    "use InpaintPipeline (edgesd inpaint / outpaint)")
        start = time.perf_counter()
        # 1. Check inputs; None means the model folder's recommended default.
        settings, plan = resolve_settings(self.folder, prompt, negative_prompt, strength, num_inference_steps,
                                          guidance_scale, seed, num_images, scheduler)
        image = load_image(image, self.max_pixels)
        width, height = self.input_size(image.size, size)
        settings["size"] = [width, height]
        provenance = {**self.provenance, "input_sha256": image_sha256(image)}

        def prepare(generator) -> Preparation:
            # 3. The image's latents (sampled from its latent distribution), noised to the strength's start.
            latents = self.encode_image(preprocess(image, (width, height)), generator)
            latents = np.repeat(latents, settings["num_images"], axis=0) if settings["num_images"] > 1 else latents
            if len(plan.timesteps):
                latents = plan.add_noise(latents, generator.randn(latents.shape))
            return Preparation(latents)

        # 2. Encode the prompt, 3. prepare, 4. denoise, 5. decode: the skeleton every task shares.
        return self.generate(start, settings, plan, (width, height), provenance, prepare, callback)
