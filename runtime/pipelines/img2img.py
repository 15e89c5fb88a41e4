"""Img2ImgPipeline: Stable Diffusion image-to-image on onnxruntime or OpenVINO, torch-free.

Follows diffusers' StableDiffusionImg2ImgPipeline step for step (same preprocessing, same random
draws in the same order, same guidance rule), so an fp32 export reproduces diffusers' CPU output
for the same seed.
"""

import time

import numpy as np

from edgesd.denoise import Callback, denoise, guided
from edgesd.errors import InvalidInputError
from edgesd.generator import TorchGenerator
from edgesd.image import image_sha256, load_image, postprocess, preprocess
from edgesd.pipelines.base import Pipeline, Result, resolve_settings


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
        timings = {}
        # 1. Check inputs; None means the model folder's recommended default.
        settings, plan = resolve_settings(self.folder, prompt, negative_prompt, strength, num_inference_steps,
                                          guidance_scale, seed, num_images, scheduler)
        image = load_image(image, self.max_pixels)
        width, height = self.input_size(image.size, size)
        settings["size"] = [width, height]
        guidance_scale = settings["guidance_scale"]
        self.check_memory(width, height, num_images, guidance_scale > 1)
        provenance = {**self.provenance, "input_sha256": image_sha256(image)}
        generator = TorchGenerator(settings["seed"])
        # 2. Encode the prompt.
        t0 = time.perf_counter()
        conditioning = self.encode_prompt(prompt, negative_prompt, guidance_scale, num_images)
        timings["text"] = time.perf_counter() - t0
        # 3. Encode the image to latents (sampled from the latent distribution).
        t0 = time.perf_counter()
        latents = self.encode_image(preprocess(image, (width, height)), generator)
        latents = np.repeat(latents, num_images, axis=0) if num_images > 1 else latents
        timings["encode"] = time.perf_counter() - t0
        # 4. Noise the latents to the strength's start timestep, and denoise.
        timings["steps"] = []
        if len(plan.timesteps):
            latents = plan.add_noise(latents, generator.randn(latents.shape))
            predict = guided(self.unet, conditioning, guidance_scale)
            latents, cancelled, timings["steps"] = denoise(plan, predict, latents, generator, callback)
            if cancelled:
                return Result([], settings["seed"], settings, timings, cancelled=True, provenance=provenance)
        # 5. Decode and postprocess.
        t0 = time.perf_counter()
        images = postprocess(self.vae.decode(latents))
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        return Result(images, settings["seed"], settings, timings, provenance=provenance)
