"""Img2ImgPipeline: Stable Diffusion image-to-image on onnxruntime or OpenVINO, torch-free.

Follows diffusers' StableDiffusionImg2ImgPipeline step for step (same preprocessing, same
random draws in the same order, same guidance rule), so an fp32 export reproduces diffusers'
CPU output for the same seed. The denoising loop is written here by hand because the runtime
must not depend on torch.
"""

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from edgesd import memory, schedulers
from edgesd.errors import InvalidInputError
from edgesd.generator import TorchGenerator
from edgesd import __version__
from edgesd.image import MAX_PIXELS, image_sha256, load_image, postprocess, preprocess, target_size
from edgesd.model_folder import SUBMODELS, ModelFolder, open_model_folder
from edgesd.outputs import save_image
from edgesd.schedulers.base import Plan
from edgesd.sessions import BACKENDS, Session, choose_backend, open_session
from edgesd.tokenizer import ClipTokenizer
from edgesd.vae_tiling import tiled

log = logging.getLogger("edgesd")
Callback = Callable[[int, int, np.ndarray], bool | None]


@dataclass
class Img2ImgResult:
    images: list[Image.Image]
    seed: int
    settings: dict  # the values actually used (defaults resolved)
    timings: dict = field(default_factory=dict)  # seconds: text, encode, steps (list), decode, total
    cancelled: bool = False
    provenance: dict = field(default_factory=dict)  # model, backend, inference precision, input's sha256, version

    @property
    def parameters(self) -> dict:
        """What reproduces the images: the settings and where they were made (stored in saved files)."""
        return {**self.settings, **self.provenance}

    def save(self, path: str | Path, index: int = 0, overwrite: bool = False) -> None:
        """Write image `index` atomically, its parameters inside (PNG text chunk; EXIF in JPEG/WebP)."""
        save_image(self.images[index], Path(path), {**self.parameters, "index": index}, overwrite)


class Img2ImgPipeline:
    def __init__(self, folder: ModelFolder, open_submodel: Callable[[str], Session], backend: str, low_memory: bool = False,
                 inference_precision: str = "auto", device: str = "auto"):
        """Use `load`. `open_submodel(name)` compiles a submodel. With `low_memory` only the one in
        use stays loaded (slower: each call recompiles, from the engine's cache where it has one),
        and images larger than the VAE's native size are encoded and decoded in blended tiles."""
        self.folder = folder
        self.backend = backend
        self.format = BACKENDS[backend].format
        stored = folder.manifest["submodels"]["unet"]["formats"][self.format].get("precision", "fp32")
        self.provenance = {"model": folder.name, "model_path": str(folder.path.resolve()),
                           "manifest_sha256": folder.manifest_sha256, "edgesd_version": __version__,
                           "backend": backend, "device": device, "weights_precision": stored,
                           "inference_precision": BACKENDS[backend].effective_precision(device, inference_precision, stored)}
        self.low_memory = low_memory
        self._open_submodel = open_submodel
        self.sessions = {} if low_memory else {name: open_submodel(name) for name in SUBMODELS}
        self.tokenizer = ClipTokenizer(folder.path / "tokenizer")
        manifest = folder.manifest
        self.vae_scale_factor = manifest["vae_scale_factor"]
        self.vae_scaling_factor = manifest["vae_scaling_factor"]
        self.unet_latent_multiple = folder.unet_latent_multiple
        self._said_size_floor = self._said_far_above_native = False
        self.reuse_encodings = True  # a call with the last call's prompts or image reuses their encodings (sweeps)
        self._last_prompts = self._last_moments = None  # (key, encoding)
        self._said_negative_ignored = False
        self.max_pixels = MAX_PIXELS  # larger inputs are refused (raise it for big images: memory grows with it)
        self.vae_tile = folder.vae_sample_size  # low-memory mode tiles larger images, as diffusers' enable_vae_tiling

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        device: str = "auto",
        inference_precision: str = "auto",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        low_memory: bool = False,
    ) -> "Img2ImgPipeline":
        """Open a model folder and compile its four submodels on the chosen engine and device."""
        folder = open_model_folder(path)
        backend = choose_backend(backend, device, folder.common_formats)
        fmt = BACKENDS[backend].format
        folder.verify_once([fmt])
        options = {"threads": threads, "cache_dir": Path(cache_dir) if cache_dir else None}

        def open_submodel(name: str) -> Session:
            return open_session(backend, folder.model_file(name, fmt), device, inference_precision, **options)

        return cls(folder, open_submodel, backend, low_memory, inference_precision, device)

    def wrap_sessions(self, wrap: Callable[[str, Session], Session]) -> None:
        """Put `wrap(name, session)` around every submodel's session, now and whenever one is opened
        later (low-memory mode): how tools time, record or swap engine calls."""
        opener = self._open_submodel
        self._open_submodel = lambda name: wrap(name, opener(name))
        self.sessions = {name: wrap(name, session) for name, session in self.sessions.items()}

    def _submodel(self, name: str) -> Session:
        """The compiled submodel; in low-memory mode opened here, and freed when the stage using it returns."""
        return self.sessions.get(name) or self._open_submodel(name)

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
    ) -> Img2ImgResult:
        """`size`: (width, height) to resize the input to first; one side None keeps the aspect ratio."""
        start = time.perf_counter()
        timings = {}
        # 1. Check inputs; None means the model folder's recommended default.
        settings, plan = resolve_settings(self.folder, prompt, negative_prompt, strength, num_inference_steps,
                                          guidance_scale, seed, num_images, scheduler)
        strength, guidance_scale, seed = settings["strength"], settings["guidance_scale"], settings["seed"]
        image = load_image(image, self.max_pixels)
        width, height = self.input_size(image.size, size)
        settings["size"] = [width, height]
        self._say_when_far_above_native(width, height)
        do_guidance = guidance_scale > 1
        if negative_prompt and not do_guidance and not self._said_negative_ignored:
            self._said_negative_ignored = True
            log.warning("the negative prompt is ignored: guidance_scale %g <= 1 turns guidance off", guidance_scale)
        memory.check_fits(memory.call_bytes(self.folder, width, height, num_images, do_guidance, self.backend, self.low_memory)
                          + (memory.weights_bytes(self.folder, self.format, True) if self.low_memory else 0),
                          f"{width}x{height} x{num_images} on {self.backend}")
        generator = TorchGenerator(seed)
        # 2. Encode the prompt (and the negative prompt when guidance applies, as diffusers: scale > 1).
        t0 = time.perf_counter()
        embeddings = self._encode_prompt(prompt, negative_prompt if do_guidance else None, do_guidance, num_images)
        timings["text"] = time.perf_counter() - t0
        # 3. Preprocess the image and encode it to latents (sampled from the latent distribution).
        t0 = time.perf_counter()
        pixels = preprocess(image, (width, height))
        provenance = {**self.provenance, "input_sha256": image_sha256(image)}
        latents = self._encode_image(pixels, generator)
        latents = np.repeat(latents, num_images, axis=0) if num_images > 1 else latents
        timings["encode"] = time.perf_counter() - t0
        # 4. Noise the latents to the strength's start timestep.
        if len(plan.timesteps):
            latents = plan.add_noise(latents, generator.randn(latents.shape))
        # 5. Denoising loop.
        latents, cancelled, timings["steps"] = self._denoise(latents, embeddings, plan, guidance_scale, do_guidance, generator, callback)
        if cancelled:
            return Img2ImgResult([], seed, settings, timings, cancelled=True, provenance=provenance)
        # 6. Decode and postprocess.
        t0 = time.perf_counter()
        decoder = self._submodel("vae_decoder")
        decoded = self._vae(lambda z: decoder.run({"latent_sample": z})[0], latents / np.float32(self.vae_scaling_factor),
                            self.vae_tile // self.vae_scale_factor, self.vae_tile)
        images = postprocess(decoded)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        return Img2ImgResult(images, seed, settings, timings, provenance=provenance)

    def input_size(self, size: tuple[int, int], requested=None) -> tuple[int, int]:
        """The (width, height) an input of `size` is processed at (see image.target_size); folders whose
        UNet upsamples by a fixed 2x floor further, to what it can take, and say so once."""
        width, height = target_size(size, self.vae_scale_factor, requested)
        multiple = self.vae_scale_factor * self.unet_latent_multiple
        floored = (width - width % multiple, height - height % multiple)
        if floored == (width, height):
            return floored
        if 0 in floored:
            raise InvalidInputError(f"image {width}x{height} is smaller than {multiple} pixels on a side, the least this model's UNet takes")
        if not self._said_size_floor:
            log.warning("this model folder's UNet takes sides that are multiples of %d px only (exported by optimum or an "
                        "older edgesd), so %dx%d is floored to %dx%d; re-export it with `edgesd export` for any multiple of %d",
                        multiple, width, height, *floored, self.vae_scale_factor)
            self._said_size_floor = True
        return floored

    def _say_when_far_above_native(self, width: int, height: int) -> None:
        native = self.folder.native_size
        if width * height > 4 * native**2 and not self._said_far_above_native:
            log.warning("%dx%d is %.0fx the pixels of this model's native %dx%d: slower, and SD models repeat content "
                        "far above their native size; resize it (size=, --resize/--width/--height) to stay near it",
                        width, height, width * height / native**2, native, native)
            self._said_far_above_native = True

    def _vae(self, run, x: np.ndarray, in_tile: int, out_tile: int) -> np.ndarray:
        if self.low_memory and max(x.shape[2:]) > in_tile:
            return tiled(run, x, in_tile, out_tile)
        return run(x)

    def _encode_prompt(self, prompt, negative_prompt, do_guidance: bool, num_images: int) -> np.ndarray:
        prompts = (negative_prompt or "", prompt) if do_guidance else (prompt,)
        cached = self._last_prompts
        if not self.reuse_encodings or cached is None or cached[0] != prompts:
            session = self._submodel("text_encoder")
            ids = self.tokenizer(list(prompts)).astype(session.input_types["input_ids"])
            cached = self._last_prompts = (prompts, session.run({"input_ids": ids})[0])
        # Each prompt's embedding repeated num_images times; [negatives..., positives...] under guidance.
        embeddings = np.repeat(cached[1], num_images, axis=0)
        embeddings.setflags(write=False)  # fed unchanged to every UNet call: engines may keep it on the device
        return embeddings

    def _encode_image(self, pixels: np.ndarray, generator: TorchGenerator) -> np.ndarray:
        key = (hashlib.sha256(pixels.tobytes()).digest(), pixels.shape, self.low_memory, self.vae_tile)
        cached = self._last_moments
        if not self.reuse_encodings or cached is None or cached[0] != key:
            encoder = self._submodel("vae_encoder")
            moments = self._vae(lambda x: encoder.run({"sample": x})[0], pixels, self.vae_tile, self.vae_tile // self.vae_scale_factor)
            cached = self._last_moments = (key, moments)
        mean, logvar = np.split(cached[1], 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        sample = mean + std * generator.randn(mean.shape)
        return (np.float32(self.vae_scaling_factor) * sample).astype(np.float32)

    def _denoise(self, latents, embeddings, plan, guidance_scale, do_guidance, generator, callback):
        if len(plan.timesteps) == 0:
            return latents, False, []
        return self._loop(self._submodel("unet"), latents, embeddings, plan, guidance_scale, do_guidance, generator, callback)

    def _loop(self, unet, latents, embeddings, plan, guidance_scale, do_guidance, generator, callback):
        timestep_type = unet.input_types["timestep"]
        state = plan.initial_state()
        step_times = []
        total = len(plan.timesteps)
        doubled = np.empty((2 * len(latents), *latents.shape[1:]), np.float32) if do_guidance else None
        for i, t in enumerate(plan.timesteps):
            t0 = time.perf_counter()
            if do_guidance:  # one batched UNet call: [unconditional, conditional]
                doubled[: len(latents)] = latents
                doubled[len(latents) :] = latents
            model_input = plan.scale_model_input(doubled if do_guidance else latents, i)
            feeds = {"sample": model_input, "timestep": np.asarray(t, dtype=timestep_type),
                     "encoder_hidden_states": embeddings}
            noise_pred = unet.run(feeds)[0]
            if do_guidance:
                uncond, text = np.split(noise_pred, 2)
                noise_pred = uncond + np.float32(guidance_scale) * (text - uncond)
            latents, state = plan.step(noise_pred, i, latents, state, generator)
            step_times.append(time.perf_counter() - t0)
            if callback is not None and callback(i + 1, total, latents) is False:
                return latents, True, step_times
        return latents, False, step_times


def resolve_settings(folder: ModelFolder, prompt, negative_prompt=None, strength=None, num_inference_steps=None,
                     guidance_scale=None, seed=None, num_images=1, scheduler=None) -> tuple[dict, Plan]:
    """Check a call's options against the model folder (no submodel is needed: the CLI runs this
    before loading) and fill in defaults: None means the folder's recommended value. Returns the
    settings actually used and the scheduler's plan."""
    defaults = folder.defaults
    strength = defaults["strength"] if strength is None else strength
    steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
    guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    seed = secrets.randbelow(2**63) if seed is None else seed
    if not isinstance(prompt, str) or (negative_prompt is not None and not isinstance(negative_prompt, str)):
        raise InvalidInputError("prompt and negative_prompt must be strings")
    if not 0 <= strength <= 1:
        raise InvalidInputError(f"strength must be between 0 and 1, got {strength}")
    if int(steps) != steps or steps < 1:
        raise InvalidInputError(f"num_inference_steps must be a positive integer, got {steps}")
    if guidance_scale < 0:
        raise InvalidInputError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if int(num_images) != num_images or num_images < 1:
        raise InvalidInputError(f"num_images must be a positive integer, got {num_images}")
    if int(seed) != seed or not 0 <= seed < 2**64:
        raise InvalidInputError(f"seed must be an integer in [0, 2**64), got {seed}")
    plan = schedulers.from_config(folder.scheduler_config, scheduler).plan(steps, strength)
    if strength > 0 and len(plan.timesteps) == 0:
        raise InvalidInputError(
            f"strength {strength} with {steps} steps leaves no denoising step (int(steps * strength) = 0); "
            "increase strength or num_inference_steps"
        )
    settings = dict(prompt=prompt, negative_prompt=negative_prompt, strength=strength, num_inference_steps=steps,
                    guidance_scale=guidance_scale, seed=seed, num_images=num_images,
                    scheduler=scheduler or folder.scheduler_config["_class_name"])
    return settings, plan
