"""What every task pipeline shares: loading a model folder on an engine, the typed submodels, the
input checks and sizes, the memory check, provenance, reusing the last encodings (sweeps), and the
one call skeleton (`generate`): a task supplies only what differs, its `Preparation`."""

import copy
import hashlib
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from edgesd import __version__, memory, schedulers
from edgesd.denoise import Callback, Control, OnStep, denoise, guided
from edgesd.errors import InvalidInputError, ModelFolderError
from edgesd.formats import FORMATS
from edgesd.families import Conditioning, check_options, family_of
from edgesd.hub import download, hub_origin, is_repo_id
from edgesd.generator import TorchGenerator
from edgesd.image import image_sha256, load_image, postprocess, preprocess, target_size
from edgesd.limits import MAX_PIXELS
from edgesd.lora import SUBMODELS, Lora, LoraError, LoraMerge, read_lora
from edgesd.model_folder import (VAE_SUBMODELS, ModelFolder, open_component_folder, open_model_folder, open_vae_folder,
                                 tokenizer_folder)
from edgesd.models import ControlNet, TextEncoder, UNet, Vae
from edgesd.models.controlnet import residual_count
from edgesd.models.unet import no_residuals
from edgesd.outpaint import grown
from edgesd.outputs import save_image
from edgesd.schema import CONTROL_OPTIONS, check_control_options, check_settings
from edgesd.schedulers.base import Plan
from edgesd.sessions import BACKENDS, Session, choose_backend, mapped_weights, open_session
from edgesd.tokenizer import ClipTokenizer

log = logging.getLogger("edgesd")


@dataclass
class Result:
    images: list[Image.Image]
    seed: int
    settings: dict  # the values actually used (defaults resolved)
    timings: dict = field(default_factory=dict)  # seconds: text, encode, steps (list), decode, total
    cancelled: bool = False
    provenance: dict = field(default_factory=dict)  # model, backend, precisions, device, input's sha256, version
    latents: np.ndarray | None = None  # with output_type="latent": the denoised latents, not decoded (images empty)
    interrupted: bool = False  # the callback answered STOP: fewer steps than the settings say were run

    @property
    def parameters(self) -> dict:
        """What reproduces the images: the settings and where they were made (stored in saved files)."""
        return {**self.settings, **self.provenance}

    def save(self, path: str | Path, index: int = 0, overwrite: bool = False) -> None:
        """Write image `index` atomically, its parameters inside (PNG text chunk; EXIF in JPEG/WebP)."""
        save_image(self.images[index], Path(path), {**self.parameters, "index": index}, overwrite)


@dataclass
class Preparation:
    """What a task gives the shared skeleton: the starting latents (noised to the strength's start),
    UNet channels beside them (inpainting UNets' mask and masked image, already doubled for guidance),
    work after each step (inpainting's blend of the known region), and after decoding (a paste-back)."""
    latents: np.ndarray
    extra: np.ndarray | None = None
    on_step: OnStep | None = None
    finish: Callable[[list[Image.Image]], list[Image.Image]] | None = None


class Pipeline:
    task = ""  # what its __call__ does, stored with every output ("img2img", "inpaint")
    task_defaults: dict[str, dict] = {}  # family -> this task's defaults over the folder's (inpainting's strength, as diffusers)
    control_scale = 1.0  # this task's default controlnet_conditioning_scale (diffusers' ControlNet pipeline's)

    @classmethod
    def check_folder(cls, folder: ModelFolder) -> None:
        """Refuse a model folder this task cannot run (img2img on an inpainting UNet): from the folder alone,
        so the CLI says it before loading; a call says it too (a pipeline made for another task, as edgesd
        serve loads an inpainting model, can still be turned into one that fits with from_pipe)."""

    def __init__(self, folder: ModelFolder, open_submodel: Callable[[str, LoraMerge | None], Session], backend: str,
                 low_memory: bool = False, inference_precision: str = "auto", device: str = "auto", loras=(),
                 vae: ModelFolder | None = None, vae_decode_only: bool = False, controlnets: Sequence[ModelFolder] = ()):
        """Use `load`. `open_submodel(name, lora)` compiles a submodel with a LoRA merge (or None).
        `vae`: a VAE folder replacing the model's VAE (its decoder only, with `vae_decode_only`).
        `controlnets`: ControlNet folders (submodels controlnet_0, controlnet_1, ...).
        With `low_memory` only the one in use stays loaded (slower: each call recompiles, from the
        engine's cache where it has one), and images larger than the VAE's native size are encoded
        and decoded in blended tiles."""
        self.folder = folder
        self.family = family_of(folder)
        self.backend = backend
        self.format = BACKENDS[backend].format
        self.low_memory = low_memory
        self.loras = self._fitting(_read_loras(loras))
        self._open_submodel = open_submodel
        self.controlnet_names = tuple(f"controlnet_{i}" for i in range(len(controlnets)))
        self.sessions = {} if low_memory else self._open_all()
        manifest = folder.manifest
        self.text_encoders = {name: TextEncoder(ClipTokenizer(folder.path / tokenizer_folder(name)),
                                                lambda name=name: self._submodel(name))
                              for name in self.family.text_encoders}
        residuals = no_residuals(folder.unet_config) if manifest.get("unet_controlnet_inputs") else None
        self.unet = UNet(lambda: self._submodel("unet"), folder.unet_config.get("in_channels", 4), residuals)
        self.controlnets = [ControlNet(lambda name=name: self._submodel(name), c.manifest["controlnet"]["residuals"],
                                       c.manifest["controlnet"]["global_pool_conditions"])
                            for name, c in zip(self.controlnet_names, controlnets)]
        replaced = _vae_replaces(vae, vae_decode_only)
        encoder, decoder = (vae.manifest if name in replaced else manifest for name in VAE_SUBMODELS)
        self.vae = Vae(lambda: self._submodel("vae_encoder"), lambda: self._submodel("vae_decoder"),
                       manifest["vae_scale_factor"], encoder["vae_scaling_factor"], folder.vae_sample_size,
                       sampled=encoder.get("vae_encoder_output") != "latents", decoder_scaling_factor=decoder["vae_scaling_factor"])
        self.vae.tiling = low_memory  # as diffusers' enable_vae_tiling
        self.unet_latent_multiple = folder.unet_latent_multiple
        self.latent_channels = manifest["latent_channels"]
        self.max_pixels = MAX_PIXELS  # larger inputs are refused (raise it for big images: memory grows with it)
        self.reuse_encodings = True  # a call with the last call's prompts or image reuses their encodings (sweeps)
        self._last_prompts = self._last_moments = None  # (key, encoding)
        self._said = set()  # warnings given once per pipeline
        stored = manifest["submodels"]["unet"]["formats"][self.format].get("precision", "fp32")
        # what outputs carry: names, hashes and versions, never a local path (images are shared)
        self.provenance = {"task": self.task, "model": folder.name, "manifest_sha256": folder.manifest_sha256, "edgesd_version": __version__,
                           "backend": backend, "device": BACKENDS[backend].device_used(device), "weights_precision": stored,
                           "inference_precision": BACKENDS[backend].effective_precision(device, inference_precision, stored)}
        self.plan, self._vae_decode_only = LoadPlan(folder, vae, backend, tuple(controlnets)), vae_decode_only  # what the memory check sizes
        if vae is not None:
            self.provenance["vae"] = {"folder": vae.name, "manifest_sha256": vae.manifest_sha256, "replaces": list(replaced)}
        if controlnets:
            self.provenance["controlnets"] = [{"folder": c.name, "manifest_sha256": c.manifest_sha256} for c in controlnets]
        if origin := hub_origin(folder.path):  # replay finds it again even once the cache is cleared
            self.provenance.update(model=origin["repo"], hub_revision=origin["revision"])
        self._record_loras()

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str = "auto", inference_precision: str = "auto",
             threads: int | None = None, cache_dir: str | Path | None = None, low_memory: bool = False,
             loras: Sequence[tuple[str | Path, float] | str | Path] = (), vae: str | Path | None = None,
             vae_decode_only: bool = False, revision: str | None = None,
             controlnet: str | Path | Sequence[str | Path] | None = None):
        """Open a model folder and compile its submodels on the chosen engine and device. `loras`:
        LoRA files (.safetensors; kohya or diffusers format) with their weights, e.g.
        [("style.safetensors", 0.8)], merged into the text encoder's and UNet's weights as they load.
        `vae`: a VAE folder (`edgesd export madebyollin/taesd`: a tiny VAE, much faster) used instead
        of the model's VAE, or with `vae_decode_only` for decoding only (fast previews).
        `controlnet`: a ControlNet folder (`edgesd export lllyasviel/control_v11p_sd15_canny`), or a list
        of them (Multi-ControlNet); a call then takes `control_image` and diffusers' ControlNet options.
        `path` may be a hub repo id (OWNER/REPO, at `revision`) holding an exported model (edgesd's or
        optimum's layout): only the files the engine needs are downloaded, into the hub cache."""
        return cls.open(plan_load(path, backend, device, vae, revision, controlnet=controlnet), device, inference_precision,
                        threads, cache_dir, low_memory, loras, vae_decode_only)

    @classmethod
    def from_pipe(cls, pipe: "Pipeline") -> "Pipeline":
        """`pipe`'s loaded submodels as this task's pipeline (diffusers' from_pipe): inpainting with an
        img2img pipeline's model, nothing compiled again. The two share sessions and LoRAs."""
        other = copy.copy(pipe)
        other.__class__ = cls
        other.provenance = {**pipe.provenance, "task": cls.task}
        return other

    @classmethod
    def open(cls, plan: "LoadPlan", device: str = "auto", inference_precision: str = "auto", threads: int | None = None,
             cache_dir: str | Path | None = None, low_memory: bool = False,
             loras: Sequence[tuple[str | Path, float] | str | Path] = (), vae_decode_only: bool = False):
        """`load`'s second half: hash the files the engine will read (once), then compile (see `plan_load`)."""
        folder, vae_folder, backend = plan.folder, plan.vae, plan.backend
        fmt = BACKENDS[backend].format
        for checked in filter(None, (folder, vae_folder, *plan.controlnets)):
            checked.verify_once([fmt])
        options = {"threads": threads, "cache_dir": Path(cache_dir) if cache_dir else None}
        replaced = _vae_replaces(vae_folder, vae_decode_only)
        upcast = family_of(folder).name == "sdxl"  # (SD pipelines ignore force_upcast, on by default in diffusers)

        def open_submodel(name: str, lora: LoraMerge | None) -> Session:
            if name.startswith("controlnet_"):
                return open_session(backend, plan.controlnets[int(name.rsplit("_", 1)[1])].model_file("controlnet", fmt), device,
                                    inference_precision, **options)
            source = vae_folder if name in replaced else folder
            precision = inference_precision
            if name in VAE_SUBMODELS and upcast and source.vae_config.get("force_upcast") and \
                    BACKENDS[backend].effective_precision(device, precision, "fp32") == "fp16":
                precision = "fp32"  # SDXL's VAE overflows in fp16: fp32, as diffusers' SDXL pipelines upcast it
            return open_session(backend, source.model_file(name, fmt), device, precision, lora=lora, **options)

        return cls(folder, open_submodel, backend, low_memory, inference_precision, device, loras, vae_folder, vae_decode_only,
                   plan.controlnets)

    def set_loras(self, loras: Sequence[tuple[str | Path, float] | str | Path]) -> None:
        """Use these LoRAs instead of the loaded ones ([] for none): the submodels they change are
        opened again from the folder (the VAE stays as it is)."""
        old, new = self.loras, self._fitting(_read_loras(loras))
        changed = [name for name in SUBMODELS if name in self.sessions and any(l.layers.get(name) for l in (*old, *new))]
        for name in changed:  # the old session goes first: never two UNets in memory
            del self.sessions[name]
        try:
            self.loras = new
            self.sessions.update({name: self._open(name) for name in changed})
        except Exception:  # e.g. a LoRA that does not fit: back to the old ones
            self.loras = old
            self.sessions.update({name: self._open(name) for name in changed})
            raise
        finally:
            self._last_prompts = None
            self._record_loras()

    def _fitting(self, loras: list[Lora]) -> list[Lora]:
        """`loras`, once each changes only text encoders this model has (layer names and shapes are
        checked against the graphs as the submodels open)."""
        for lora in loras:
            missing = [name for name in lora.layers if name not in self.folder.submodels]
            if missing:
                kind = "an SDXL LoRA" if "text_encoder_2" in missing else "a LoRA for another family"
                raise LoraError(f"LoRA {lora.path.name} has layers for {' and '.join(missing)} ({kind}), which "
                                f"{self.folder.name} ({self.family.name}) does not have")
        return loras

    def _record_loras(self) -> None:
        self.provenance.pop("loras", None)
        if self.loras:
            self.provenance["loras"] = [lora.record for lora in self.loras]

    def _open_all(self) -> dict[str, Session]:
        """Every submodel's session, two opened at once, the UNet first: onnxruntime builds a session
        (graph optimizations, weight layouts) mostly on one core, so the UNet's overlaps the others'
        (SD-turbo: 6.5 -> 4.7 s; SD 1.5 (inpainting): 5.7 -> 5.0 s, RSS after opening 4.4 -> 4.2 GB
        with the heap trimmed). OpenVINO's only read their graphs here (they compile per call)."""
        submodels = (*self.folder.submodels, *self.controlnet_names)
        if self.backend != "onnxruntime":  # one at a time: a hang was seen opening OpenVINO's from two threads
            return {name: self._open(name) for name in submodels}
        names = sorted(submodels, key=lambda name: name != "unet")
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgesd-open") as pool:
            opened = dict(zip(names, pool.map(self._open, names)))
        mapped_weights.trim_heap()  # what building them left in the threads' malloc arenas
        return {name: opened[name] for name in submodels}

    def _open(self, name: str) -> Session:
        lora = LoraMerge(name, self.loras, self.folder.unet_config.get("layers_per_block", 2)) if name in SUBMODELS else None
        return self._open_submodel(name, lora or None)

    def wrap_sessions(self, wrap: Callable[[str, Session], Session]) -> None:
        """Put `wrap(name, session)` around every submodel's session, now and whenever one is opened
        later (low-memory mode): how tools time, record or swap engine calls."""
        opener = self._open_submodel
        self._open_submodel = lambda name, lora: wrap(name, opener(name, lora))
        self.sessions = {name: wrap(name, session) for name, session in self.sessions.items()}

    def _submodel(self, name: str) -> Session:
        """The compiled submodel; in low-memory mode opened here, and freed when the stage using it returns."""
        return self.sessions.get(name) or self._open(name)

    def say_once(self, key: str, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def input_size(self, size: tuple[int, int], requested=None) -> tuple[int, int]:
        """The (width, height) an input of `size` is processed at (see `processing_size`), said once
        where the folder's UNet floors it or it is far above the native size."""
        (width, height), floored = processing_size(self.folder, size, requested, self.max_pixels)
        if floored != (width, height):
            multiple = self.vae.scale_factor * self.unet_latent_multiple
            self.say_once("floor", "this model folder's UNet takes sides that are multiples of %d px only (exported by "
                          "optimum or an older edgesd), so %dx%d is floored to %dx%d; re-export it with `edgesd export` "
                          "for any multiple of %d", multiple, width, height, *floored, self.vae.scale_factor)
        native = self.folder.native_size
        if floored[0] * floored[1] > 4 * native**2:
            self.say_once("native", "%dx%d is %.0fx the pixels of this model's native %dx%d: slower, and SD models repeat "
                          "content far above their native size; resize it (size=, --resize/--width/--height) to stay "
                          "near it", *floored, floored[0] * floored[1] / native**2, native, native)
        return floored

    def check_memory(self, width: int, height: int, num_images: int, guided: bool) -> None:
        check_memory(self.plan, width, height, num_images, guided, self.low_memory, loaded=True,
                     vae_decode_only=self._vae_decode_only)

    def generate(self, start: float, settings: dict, plan: Plan, size: tuple[int, int], provenance: dict,
                 prepare: Callable[[TorchGenerator], Preparation], callback: Callback | None,
                 output_type: str = "pil", control_image=None) -> Result:
        """The call every task shares, in diffusers' order: check memory, encode the prompt, the task's
        latents (`prepare`, with the seeded generator: its draws are the task's), denoise with
        guidance (and the ControlNets, on `control_image`), decode (not with output_type "latent": a
        refiner takes the latents), the task's finish. `start`: when the call began (for timings["total"])."""
        if output_type not in ("pil", "latent"):
            raise InvalidInputError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
        timings = {}
        guidance_scale = settings["guidance_scale"]
        controls = self.controls(control_image, settings, size, provenance)
        self.check_memory(*size, settings["num_images"], guidance_scale > 1)
        generator = TorchGenerator(settings["seed"])
        t0 = time.perf_counter()
        conditioning = self.encode_prompt(settings, size)
        timings["text"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        task = prepare(generator)
        timings["encode"] = time.perf_counter() - t0
        latents, timings["steps"] = task.latents, []
        if len(plan.timesteps):
            predict = guided(self.unet, conditioning, guidance_scale, task.extra, controls, settings.get("guess_mode", False),
                             len(plan.timesteps))
            latents, cancelled, timings["steps"] = denoise(plan, predict, latents, generator, callback, task.on_step)
            if cancelled:
                return Result([], settings["seed"], settings, timings, cancelled=True, provenance=provenance)
        interrupted = len(timings["steps"]) < len(plan.timesteps)
        if output_type == "latent":
            timings["total"] = time.perf_counter() - start
            return Result([], settings["seed"], settings, timings, provenance=provenance, latents=latents, interrupted=interrupted)
        t0 = time.perf_counter()
        images = postprocess(self.vae.decode(latents))
        if task.finish is not None:
            images = task.finish(images)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        return Result(images, settings["seed"], settings, timings, provenance=provenance, interrupted=interrupted)

    def controls(self, control_image, settings: dict, size: tuple[int, int], provenance: dict) -> list[Control]:
        """The loaded ControlNets with their control images (one each: a path, PIL image or array),
        preprocessed as diffusers' ControlNet pipelines do (RGB, resized to the output size, [0, 1]),
        one row per image of the batch; each image's sha256 goes into `provenance`."""
        images = [] if control_image is None else list(control_image) if isinstance(control_image, (list, tuple)) else [control_image]
        if len(images) != len(self.controlnets):
            raise InvalidInputError(f"{len(images)} control image{'s' * (len(images) != 1)} for {len(self.controlnets)} "
                                    "ControlNet(s): give one control_image per ControlNet (--control-image), in order")
        controls = []
        for i, (net, image) in enumerate(zip(self.controlnets, images)):
            image = load_image(image, self.max_pixels)
            provenance.setdefault("control_sha256", []).append(image_sha256(image))
            pixels = preprocess(image, size, normalize=False)  # as diffusers' control image processor
            controls.append(Control(net, np.repeat(pixels, settings["num_images"], axis=0),
                                    settings["controlnet_conditioning_scale"][i], settings["control_guidance_start"][i],
                                    settings["control_guidance_end"][i]))
        return controls

    def encode_prompt(self, settings: dict, size: tuple[int, int]) -> Conditioning:
        """The family's conditioning for a call's settings at the processed (width, height); the
        negative prompt only where guidance applies (scale > 1), as diffusers."""
        guided = settings["guidance_scale"] > 1
        if settings["negative_prompt"] and not guided:
            self.say_once("negative", "the negative prompt is ignored: guidance_scale %g <= 1 turns guidance off",
                          settings["guidance_scale"])
        prompts = self.family.prompts(settings, guided)
        cached = self._last_prompts
        if not self.reuse_encodings or cached is None or cached[0] != prompts:
            cached = self._last_prompts = (prompts, {name: self.text_encoders[name](list(texts)) for name, texts in prompts.items()})
        return self.family.conditioning(cached[1], settings, size, guided)

    def encode_image(self, pixels: np.ndarray, generator) -> np.ndarray:
        """Scaled latents sampled from the VAE's distribution (one generator draw); the moments of the
        last image are reused by the next call on the same pixels."""
        key = (hashlib.sha256(pixels.tobytes()).digest(), pixels.shape, self.vae.tiling, self.vae.tile)
        cached = self._last_moments
        if not self.reuse_encodings or cached is None or cached[0] != key:
            cached = self._last_moments = (key, self.vae.moments(pixels))
        return self.vae.sample(cached[1], generator)


@dataclass(frozen=True)
class LoadPlan:
    """What a load will open, decided without reading any weights: the model folder (downloaded first
    when it is a hub repo), a VAE folder and ControlNet folders that fit it, and the engine all can run on."""
    folder: ModelFolder
    vae: ModelFolder | None
    backend: str
    controlnets: tuple[ModelFolder, ...] = ()


def plan_load(path: str | Path, backend: str = "auto", device: str = "auto", vae: str | Path | None = None,
              revision: str | None = None, from_hub: bool = False,
              controlnet: str | Path | Sequence[str | Path] | None = None) -> LoadPlan:
    """Every check of a load that needs no weights (the CLI runs it, then its own checks, then
    `Pipeline.open`). `from_hub`: `path` is a hub repo id whatever local folder has its name."""
    vae_folder = None if vae is None else open_vae_folder(vae)
    controlnets = [] if controlnet is None else [controlnet] if isinstance(controlnet, (str, Path)) else list(controlnet)
    controlnets = tuple(open_component_folder(c, "controlnet") for c in controlnets)
    components = {f"the VAE {vae_folder.name}": vae_folder} if vae_folder else {}
    components.update({f"the ControlNet {c.name}": c for c in controlnets})
    if from_hub or is_repo_id(path):
        wanted = [f for f in FORMATS if all(f in c.common_formats for c in components.values())] if components else None
        path = download(path, revision, backend, device, wanted)
    folder = open_model_folder(path)
    family_of(folder)
    if vae_folder is not None:
        _check_vae_fits(folder, vae_folder)
    for controlnet_folder in controlnets:
        _check_controlnet_fits(folder, controlnet_folder)
    formats = [f for f in folder.common_formats if all(f in c.common_formats for c in components.values())]
    if not formats:
        raise ModelFolderError(f"{folder.name} has {', '.join(folder.common_formats)} and "
                               + ", ".join(f"{name} {', '.join(c.common_formats)}" for name, c in components.items())
                               + ": no format in common; export them with --format both")
    weights = memory.weights_bytes(folder, formats[0], False) if backend == "auto" else None  # auto picks by it
    return LoadPlan(folder, vae_folder, choose_backend(backend, device, formats, weights), controlnets)


def processing_size(folder: ModelFolder, size: tuple[int, int], requested=None,
                    max_pixels: int = MAX_PIXELS) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the size asked, the size processed) for an input of `size`: image.target_size's answer, and
    that floored to the sides the folder's UNet takes (a fixed-2x UNet, as optimum exports, takes
    multiples of its whole downsampling only). Needs no weights: what a call runs at, and what the
    CLI sizes its memory check by before loading."""
    scale = folder.manifest["vae_scale_factor"]
    width, height = target_size(size, scale, requested, max_pixels)
    multiple = scale * folder.unet_latent_multiple
    floored = (width - width % multiple, height - height % multiple)
    if 0 in floored:
        raise InvalidInputError(f"image {width}x{height} is smaller than {multiple} pixels on a side, the least this model's UNet takes")
    return (width, height), floored


def outpaint_canvas(folder: ModelFolder, size: tuple[int, int], left: int = 0, right: int = 0, top: int = 0,
                    bottom: int = 0, requested=None, max_pixels: int = MAX_PIXELS) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the input's size once resized to `requested`, the canvas's size) of an outpainting: the
    extension rounded up to the sides the folder's UNet takes, a canvas over `max_pixels` refused."""
    if requested is not None:
        size = target_size(size, 1, requested, max_pixels)
    multiple = folder.manifest["vae_scale_factor"] * folder.unet_latent_multiple
    right, bottom = grown(size, left, right, top, bottom, multiple, max_pixels)
    return size, (size[0] + left + right, size[1] + top + bottom)


def check_memory(plan: LoadPlan, width: int, height: int, num_images: int, guided: bool, low_memory: bool = False,
                 loaded: bool = False, vae_decode_only: bool = False, what: str | None = None) -> None:
    """Refuse a call the available memory cannot hold (memory.check_call), counting the weights still
    to load: all of them before the load (the CLI checks so, before loading), and in low-memory mode
    the largest submodel, opened again for each step of a call."""
    fmt = BACKENDS[plan.backend].format
    loading = memory.weights_bytes(plan.folder, fmt, low_memory) if low_memory or not loaded else 0
    if not loaded and not low_memory:
        loading += sum(memory.weights_bytes(c, fmt, False) for c in plan.controlnets)
    memory.check_call(plan.folder, width, height, num_images, guided, plan.backend, low_memory, loading,
                      what or f"{width}x{height} x{num_images} on {plan.backend}", None if vae_decode_only else plan.vae)


def _vae_replaces(vae: ModelFolder | None, decode_only: bool) -> tuple[str, ...]:
    return () if vae is None else ("vae_decoder",) if decode_only else VAE_SUBMODELS


def _check_vae_fits(folder: ModelFolder, vae: ModelFolder) -> None:
    """A VAE for another family, or whose latents have other channels or another scale than the model's,
    cannot replace its VAE."""
    family, fits = family_of(folder).name, vae.manifest.get("family")
    if fits is not None and fits != family:  # the same shapes, other latents (TAESD vs TAESDXL)
        raise ModelFolderError(f"the VAE {vae.name} is for {fits} models, {folder.name} is an {family} model; export the "
                               f"tiny VAE for {family} (madebyollin/{'taesdxl' if family == 'sdxl' else 'taesd'})")
    ours, theirs = ((f.manifest["latent_channels"], f.manifest["vae_scale_factor"]) for f in (folder, vae))
    if ours != theirs:
        raise ModelFolderError(f"the VAE {vae.name} does not fit {folder.name}: its latents have {theirs[0]} channels at "
                               f"1/{theirs[1]} of the image's size, the model's {ours[0]} at 1/{ours[1]}")


def _check_controlnet_fits(folder: ModelFolder, controlnet: ModelFolder) -> None:
    """A ControlNet made for another family, UNet or latent size cannot steer the model's UNet; a
    folder whose UNet takes no ControlNet residuals (exported by optimum or an older edgesd) is refused
    with the export that gives it them."""
    if not folder.manifest.get("unet_controlnet_inputs"):
        source = folder.manifest.get("provenance", {}).get("source") or "SOURCE"
        raise ModelFolderError(f"{folder.name}'s UNet takes no ControlNet residuals (exported by optimum or an edgesd "
                               f"before ControlNets); re-export it: edgesd export {source} -o {folder.name}-controlnet")
    fits, unet = controlnet.manifest["controlnet"], folder.unet_config
    theirs = controlnet.manifest["family"]
    if theirs != folder.manifest["family"]:
        raise ModelFolderError(f"the ControlNet {controlnet.name} is for {theirs} models, {folder.name} is an "
                               f"{folder.manifest['family']} model; use a ControlNet made for its base model")
    mismatched = [what for what, ours, its in (
        ("cross-attention width", unet.get("cross_attention_dim"), fits["cross_attention_dim"]),
        ("block channels", unet["block_out_channels"], fits["block_out_channels"]),
        ("residual count", residual_count(unet), fits["residuals"]),
        ("latent scale", folder.manifest["vae_scale_factor"], fits["vae_scale_factor"])) if ours is not None and ours != its]
    if mismatched:
        raise ModelFolderError(f"the ControlNet {controlnet.name} does not fit {folder.name}: its {', '.join(mismatched)} "
                               "differ from the model's UNet; use a ControlNet made for its base model")
    if fits["conditioning_channels"] != 3:
        raise ModelFolderError(f"the ControlNet {controlnet.name} takes {fits['conditioning_channels']}-channel control "
                               "images; edgesd gives ControlNets RGB images (3 channels)")


def _read_loras(loras) -> list[Lora]:
    """LoRAs given as paths (weight 1), (path, weight) pairs or read Loras."""
    return [lora if isinstance(lora, Lora) else read_lora(lora) if isinstance(lora, (str, Path)) else read_lora(*lora)
            for lora in loras]


def _diffusers_names(num_images, seed, options: dict) -> tuple:
    """diffusers' names for edgesd's, taken out of `options`: num_images_per_prompt (num_images) and
    generator (a seed, or a generator with `initial_seed()`: torch's or edgesd's TorchGenerator; a fresh one
    of that seed is used, so the images are diffusers' for a generator that has drawn nothing yet)."""
    if "num_images_per_prompt" in options:
        given = options.pop("num_images_per_prompt")
        if num_images not in (1, given):
            raise InvalidInputError("give num_images or num_images_per_prompt (diffusers' name), not both")
        num_images = given
    if "generator" in options:
        generator = options.pop("generator")
        if seed is not None:
            raise InvalidInputError("give seed or generator, not both")
        if isinstance(generator, (list, tuple)):
            raise InvalidInputError("generator: give one (image i of a batch is drawn after image i - 1, as diffusers "
                                    "does with one generator); a list of generators is not supported")
        seed = generator.initial_seed() if hasattr(generator, "initial_seed") else generator
    return num_images, seed


def resolve_settings(folder: ModelFolder, prompt, negative_prompt=None, strength=None, num_inference_steps=None,
                     guidance_scale=None, seed=None, num_images=1, scheduler=None, task_defaults=None, controlnets: int = 0,
                     control_scale: float = 1.0, **family_options) -> tuple[dict, Plan]:
    """Check a call's options against the model folder (no submodel is needed: the CLI runs this
    before loading) and fill in defaults: None means the task's default for the folder's family (a
    pipeline's `task_defaults`), else the folder's recommended value. `family_options`: the family's
    own (SDXL's prompt_2, original_size, ...) and, with `controlnets` loaded, diffusers' ControlNet
    options (controlnet_conditioning_scale: default `control_scale`, the task's). Returns the settings
    actually used and the scheduler's plan."""
    num_images, seed = _diffusers_names(num_images, seed, family_options)
    family = family_of(folder)
    control = check_control_options(controlnets, control_scale, **{name: family_options.pop(name) for name in CONTROL_OPTIONS
                                                                   if name in family_options})
    options = check_options(family, family_options)
    defaults = {**folder.defaults, **(task_defaults or {}).get(family.name, {})}
    strength = defaults["strength"] if strength is None else strength
    steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
    guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    seed = secrets.randbelow(2**63) if seed is None else seed
    if not isinstance(prompt, str):
        raise InvalidInputError("prompt must be a string")
    check_settings(prompt=prompt, negative_prompt=negative_prompt, strength=strength, num_inference_steps=steps,
                   guidance_scale=guidance_scale, seed=seed, num_images=num_images, scheduler=scheduler)
    steps, num_images, seed = int(steps), int(num_images), int(seed)
    plan = schedulers.from_config(folder.scheduler_config, scheduler).plan(steps, strength, options.get("denoising_start"),
                                                                           options.get("denoising_end"))
    if len(plan.timesteps) == 0 and ({"denoising_start", "denoising_end"} & set(options)):
        raise InvalidInputError(f"denoising_start/denoising_end leave none of the {steps} steps (at strength {strength}); "
                                "use more num_inference_steps, or a wider denoising range")
    if strength > 0 and len(plan.timesteps) == 0:
        raise InvalidInputError(
            f"strength {strength} with {steps} steps leaves no denoising step (int(steps * strength) = 0); "
            "increase strength or num_inference_steps"
        )
    settings = dict(prompt=prompt, negative_prompt=negative_prompt, strength=strength, num_inference_steps=steps,
                    guidance_scale=guidance_scale, seed=seed, num_images=num_images,
                    scheduler=scheduler or folder.scheduler_config["_class_name"], **options, **control)
    return settings, plan
