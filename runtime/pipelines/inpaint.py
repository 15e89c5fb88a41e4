"""InpaintPipeline: repaint the white part of a mask, keep the black, torch-free.

Follows diffusers' StableDiffusionInpaintPipeline step for step, so an fp32 export reproduces its
CPU output for the same seed: the mask is resized, made grayscale and binarised (>= 0.5 repaints)
as its mask processor does and taken to latent size by nearest neighbour; the generator is drawn
in its order, including the masked image's encoding that a 4-channel UNet never uses. Two kinds of
UNet: a 9-channel inpainting UNet sees the mask and the masked image's latents beside the latents;
a normal 4-channel one denoises everything and, after each step, the known region is put back,
noised to the next timestep (on_step). Without `size` the input is resized to the model's native
square, as in diffusers; `edgesd inpaint` passes the input's own size instead.
"""

import time

import numpy as np
from PIL import Image, ImageFilter

from edgesd.denoise import Callback
from edgesd.errors import InvalidInputError
from edgesd.image import image_sha256, load_image, preprocess
from edgesd.mask_crop import crop_region, paste_back, resize_fill
from edgesd.outpaint import extend
from edgesd.schema import MASKED_CONTENT
from edgesd.pipelines.base import Pipeline, Preparation, Result, outpaint_canvas, resolve_settings


def mask_array(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(1, 1, H, W) float32 of 0 (keep) and 1 (repaint): resized (Lanczos, in the mask's own mode),
    made grayscale, binarised at 0.5, as diffusers' mask processor does."""
    if mask.size != size:
        mask = mask.resize(size, resample=Image.Resampling.LANCZOS)
    gray = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return (gray >= 0.5).astype(np.float32)[None, None]


def filled(image: Image.Image, pixel_mask: np.ndarray) -> Image.Image:
    """`image` with its masked area painted in the colours around it (A1111's "fill"): the known pixels
    blurred wider and wider, normalised by how much known area each blur saw; the narrowest blur that
    saw enough of it colours a pixel."""
    known = pixel_mask[0, 0] < 0.5
    rgb = np.asarray(image.convert("RGB").resize(known.shape[::-1], resample=Image.Resampling.LANCZOS))
    if not known.any():
        return Image.fromarray(rgb)
    premultiplied = Image.fromarray(rgb * known[..., None].astype(np.uint8))
    coverage = Image.fromarray(known.astype(np.uint8) * 255)
    out, unfilled = rgb.astype(np.float32), ~known
    for radius in (2, 4, 16, 64, 256):
        weight = np.asarray(coverage.filter(ImageFilter.GaussianBlur(radius)), np.float32)
        colour = np.asarray(premultiplied.filter(ImageFilter.GaussianBlur(radius)), np.float32)
        reached = unfilled & (weight >= 8)  # saw at least 3% known area: a steady colour
        out[reached] = colour[reached] * 255 / weight[reached, None]
        unfilled &= ~reached
    out[unfilled] = rgb[known].mean(0)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


class InpaintPipeline(Pipeline):
    task = "inpaint"
    task_defaults = {"sd": {"strength": 1.0}, "sdxl": {"strength": 0.9999}}  # diffusers' (SDXL: 49 of 50 steps, noised image)
    control_scale = 0.5  # StableDiffusionControlNetInpaintPipeline's

    def __call__(
        self,
        image,
        mask_image,
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
        padding_mask_crop: int | None = None,
        masked_content: str = "original",
        control_image=None,
        **options,
    ) -> Result:
        """`mask_image`: white repaints, black keeps (a path, PIL image or array). `strength` defaults
        to 1 (the masked area's content is ignored; SDXL: 0.9999, as diffusers). `size` defaults, as in
        diffusers, to the model's native square (`edgesd inpaint` keeps the input's size instead). `padding_mask_crop`: inpaint
        only the mask's bounding box grown by this many pixels, at the processing size, and paste it back.
        `control_image` and `options` (the family's own, ControlNet options: controlnet_conditioning_scale
        0.5, ...): see Img2ImgPipeline.__call__."""
        if self.unet.in_channels not in (4, 9):
            raise InvalidInputError(f"this model's UNet takes {self.unet.in_channels} channels; inpainting needs 4 or 9")
        start = time.perf_counter()
        settings, plan = resolve_settings(self.folder, prompt, negative_prompt, strength, num_inference_steps, guidance_scale,
                                          seed, num_images, scheduler, self.task_defaults, len(self.controlnets),
                                          self.control_scale, **options)
        if len(plan.timesteps) == 0:
            raise InvalidInputError("inpainting needs at least one denoising step: increase strength or num_inference_steps")
        if masked_content not in MASKED_CONTENT:
            raise InvalidInputError(f"masked_content {masked_content!r}: one of {', '.join(MASKED_CONTENT)}")
        image = load_image(image, self.max_pixels)
        mask = load_image(mask_image, self.max_pixels, keep_gray=True)
        native = self.folder.native_size
        width, height = self.input_size(image.size, size or (native, native))
        settings.update(size=[width, height], padding_mask_crop=padding_mask_crop)
        if masked_content != "original":
            settings["masked_content"] = masked_content
        provenance = {**self.provenance, "input_sha256": image_sha256(image), "mask_sha256": image_sha256(mask)}
        finish = None
        if padding_mask_crop is not None:  # inpaint the mask's box at full size, then paste it back
            if not np.asarray(mask.convert("L")).any():
                raise InvalidInputError("the mask is all black: there is nothing to inpaint (nor to crop around)")
            box = crop_region(mask, width, height, padding_mask_crop)
            original, original_mask = image, mask
            image, mask = (resize_fill(im.crop(box), width, height) for im in (image, mask))
            finish = lambda images: [paste_back(original_mask, original, im, box) for im in images]  # noqa: E731
        n, copies = settings["num_images"], 2 if settings["guidance_scale"] > 1 else 1

        def prepare(generator) -> Preparation:
            # Latents, in diffusers' draw order: image latents (4-channel UNet, or strength < 1), noise,
            # then the masked image's latents (drawn even where a 4-channel UNet will not use them).
            pixel_mask = mask_array(mask, (width, height))
            pixels = preprocess(image, (width, height))
            full_strength = settings["strength"] == 1.0
            latent_mask = pixel_mask[:, :, :: self.vae.scale_factor, :: self.vae.scale_factor]
            image_latents = None
            if self.unet.in_channels == 4 or not full_strength:
                start = preprocess(filled(image, pixel_mask), (width, height)) if masked_content == "fill" else pixels
                image_latents = np.repeat(self.encode_image(start, generator), n, axis=0)
                if masked_content in ("latent noise", "latent nothing"):  # A1111's: the masked latents replaced
                    fill = generator.randn(image_latents.shape) if masked_content == "latent noise" else 0
                    image_latents = (1 - latent_mask) * image_latents + latent_mask * fill
            noise = generator.randn((n, self.latent_channels, height // self.vae.scale_factor, width // self.vae.scale_factor))
            latents = noise * plan.init_noise_sigma if full_strength else plan.add_noise(image_latents, noise)
            masked_latents = self.encode_image(pixels * (pixel_mask < 0.5), generator)
            if self.unet.in_channels == 9:  # the UNet sees the mask and the masked image beside the latents
                extra = np.concatenate([np.repeat(latent_mask, n * copies, axis=0),
                                        np.repeat(masked_latents, n * copies, axis=0)], axis=1)
                return Preparation(latents, extra, finish=finish)
            keep = np.float32(1) - latent_mask

            def on_step(i: int, latents: np.ndarray) -> np.ndarray:  # the known region put back, noised to the next step
                known = image_latents if i == len(plan.timesteps) - 1 else plan.add_noise(image_latents, noise, i + 1)
                return keep * known + latent_mask * latents

            return Preparation(latents, on_step=on_step, finish=finish)

        return self.generate(start, settings, plan, (width, height), provenance, prepare, callback, control_image=control_image)

    def outpaint(self, image, prompt: str, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
                 overlap: int | None = None, size: tuple[int | None, int | None] | None = None, **options) -> Result:
        """Extend `image` by the given pixels on each side and paint the new area (see edgesd.outpaint);
        `size` resizes the input first; `overlap` (default: two latent cells) is how far the repainted
        band reaches into the image. Other options as for __call__."""
        image = given = load_image(image, self.max_pixels)
        resized, _ = outpaint_canvas(self.folder, image.size, left, right, top, bottom, size, self.max_pixels)
        if size is not None:
            image = image.resize(resized, resample=Image.Resampling.LANCZOS)
        multiple = self.vae.scale_factor * self.unet_latent_multiple
        overlap = 2 * self.vae.scale_factor if overlap is None else overlap
        canvas, mask = extend(image, left, right, top, bottom, multiple, overlap, self.max_pixels)
        right, bottom = canvas.width - image.width - left, canvas.height - image.height - top  # as rounded
        result = self(canvas, mask, prompt, size=canvas.size, **options)
        result.settings.update(extension=dict(left=left, right=right, top=top, bottom=bottom, overlap=overlap),
                               size=list(image.size))  # the input's size: the canvas follows from it
        result.provenance.update(task="outpaint", input_sha256=image_sha256(given))  # the mask follows from these
        del result.provenance["mask_sha256"]
        return result
