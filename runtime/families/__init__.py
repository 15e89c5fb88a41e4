"""Model families: how a call's prompts become a UNet's conditioning, a dictionary of *named* UNet
inputs (the guidance wrapper batches and the UNet wrapper feeds whatever names it holds, so neither
changes when a family adds one). The manifest's `family` picks one; a family not here is refused by
`family_of` before any weights load. Written by hand (torch-free), following diffusers' pipelines.

SD 1.x and 2.x are one family in code (their differences live in the configs that the wrappers
read: VAE factor, prediction type, attention heads). SDXL, as StableDiffusionXLImg2ImgPipeline:
two text encoders whose penultimate hidden states are concatenated, the second's pooled projection
(`text_embeds`) and the size conditioning (`time_ids`) beside them; a refiner has the second
encoder only and conditions on an aesthetic score instead of the target size.
"""

from dataclasses import dataclass

import numpy as np

from edgesd.errors import InvalidInputError, ModelFolderError
from edgesd.schema import TEXT_ENCODERS, check_family_options
from edgesd.sessions.base import output

Conditioning = dict[str, np.ndarray]  # UNet input name -> array, batch-ordered [negatives..., positives...]
Encoded = dict[str, dict[str, np.ndarray]]  # text encoder name -> its outputs by name, one row per prompt


@dataclass(frozen=True)
class Family:
    """SD 1.x/2.x: one text encoder, its last hidden states as `encoder_hidden_states`."""
    name: str
    text_encoders: tuple[str, ...] = ("text_encoder",)
    options: tuple[str, ...] = ()  # call options beyond the shared ones (diffusers' names); None means its default

    def prompts(self, settings: dict, guided: bool) -> dict[str, tuple[str, ...]]:
        """What each text encoder runs on: the negative prompt ("" if none) first under guidance, as diffusers."""
        prompt, negative = settings["prompt"], settings["negative_prompt"]
        return {"text_encoder": (negative or "", prompt) if guided else (prompt,)}

    def conditioning(self, encoded: Encoded, settings: dict, size: tuple[int, int], guided: bool) -> Conditioning:
        """The UNet's inputs from the text encoders' outputs, each row repeated num_images times."""
        return _batched({"encoder_hidden_states": output(encoded["text_encoder"], "last_hidden_state")}, settings["num_images"])


SDXL_OPTIONS = ("prompt_2", "negative_prompt_2", "original_size", "target_size", "crops_coords_top_left",
                "negative_original_size", "negative_target_size", "negative_crops_coords_top_left", "aesthetic_score",
                "negative_aesthetic_score", "denoising_start", "denoising_end")


@dataclass(frozen=True)
class SDXL(Family):
    text_encoders: tuple[str, ...] = TEXT_ENCODERS  # those the folder has: a refiner has text_encoder_2 only
    options: tuple[str, ...] = SDXL_OPTIONS
    requires_aesthetics_score: bool = False
    force_zeros_for_empty_prompt: bool = True

    def _zero_negatives(self, settings: dict, guided: bool) -> bool:
        return guided and settings["negative_prompt"] is None and self.force_zeros_for_empty_prompt

    def prompts(self, settings: dict, guided: bool) -> dict[str, tuple[str, ...]]:
        """prompt_2 (default: prompt) for the second encoder, negative_prompt_2 (default: the negative
        prompt) likewise; by position, as diffusers zips them with the encoders a folder has (a
        refiner's only encoder gets `prompt`). No negative prompt under force_zeros: zeros, not encoded."""
        negative = settings["negative_prompt"] or ""
        positives = (settings["prompt"], settings.get("prompt_2") or settings["prompt"])
        negatives = (negative, settings.get("negative_prompt_2") or negative)
        encode_negatives = guided and not self._zero_negatives(settings, guided)
        return {name: (negatives[i], positives[i]) if encode_negatives else (positives[i],)
                for i, name in enumerate(self.text_encoders)}

    def conditioning(self, encoded: Encoded, settings: dict, size: tuple[int, int], guided: bool) -> Conditioning:
        hidden = np.concatenate([_penultimate(encoded[name]) for name in self.text_encoders], axis=-1)
        pooled = output(encoded["text_encoder_2"], "text_embeds")
        if self._zero_negatives(settings, guided):
            hidden, pooled = (np.concatenate([np.zeros_like(x), x]) for x in (hidden, pooled))
        time_ids = self.time_ids(settings, size)
        if guided:
            time_ids = np.concatenate([self.time_ids(settings, size, negative=True), time_ids])
        return _batched({"encoder_hidden_states": hidden, "text_embeds": pooled, "time_ids": time_ids}, settings["num_images"])

    def time_ids(self, settings: dict, size: tuple[int, int], negative: bool = False) -> np.ndarray:
        """(1, 6) original size, crop's top-left, target size, each (height, width); a refiner's (1, 5)
        ends with the aesthetic score instead. Sizes default to the processed size (width, height),
        the negatives' to the positives', as diffusers; the negative crop is used only by refiners
        (diffusers' base pipelines pair the negative sizes with the positive crop)."""
        width, height = size
        original = tuple(settings.get("original_size") or (height, width))
        target = tuple(settings.get("target_size") or (height, width))
        crop = tuple(settings.get("crops_coords_top_left") or (0, 0))
        if negative:
            original = tuple(settings.get("negative_original_size") or original)
            target = tuple(settings.get("negative_target_size") or target)
        if self.requires_aesthetics_score:
            if negative:
                crop = tuple(settings.get("negative_crops_coords_top_left") or (0, 0))
            score = settings.get("negative_aesthetic_score" if negative else "aesthetic_score")
            ids = (*original, *crop, 2.5 if negative and score is None else 6.0 if score is None else score)
        else:
            ids = (*original, *crop, *target)
        return np.array([ids], np.float32)


def _penultimate(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """hidden_states[-2], as diffusers' SDXL encode_prompt takes (clip_skip None): the exported
    encoder's outputs hidden_states.0 .. hidden_states.N (N layers)."""
    layers = [int(name.rsplit(".", 1)[1]) for name in outputs if name.startswith("hidden_states.")]
    if len(layers) < 2:
        raise ModelFolderError("this SDXL text encoder does not output its hidden states (hidden_states.N); "
                               "re-export the model with `edgesd export`")
    return outputs[f"hidden_states.{max(layers) - 1}"]


def _batched(inputs: dict[str, np.ndarray], num_images: int) -> Conditioning:
    """Each prompt's row repeated num_images times, read-only: fed unchanged to every UNet call, so
    engines may keep them on the device."""
    batched = {}
    for name, value in inputs.items():
        batched[name] = np.repeat(value, num_images, axis=0) if num_images > 1 else value.copy()
        batched[name].setflags(write=False)
    return batched


SD = Family("sd")
FAMILIES = {"sd1": SD, "sd2": SD, "sd": SD, "sdxl": SDXL("sdxl")}  # "sd": an optimum folder of either version


def family_of(folder) -> Family:
    """The family a model folder's manifest names, set up from its manifest (SDXL: which text encoders
    it has, its conditioning config), or why this edgesd cannot run it."""
    manifest = folder.manifest
    family = FAMILIES.get(manifest.get("family"))
    if family is None:
        raise ModelFolderError(f"{folder.path} is a {manifest.get('family')!r}-family model; this edgesd runs "
                               f"{', '.join(FAMILIES)} (SD 1.x/2.x, SDXL) models")
    if isinstance(family, SDXL):
        family = SDXL(family.name, tuple(name for name in TEXT_ENCODERS if name in manifest["submodels"]),
                      **(manifest.get("conditioning") or {}))
    return family


def check_options(family: Family, options: dict) -> dict:
    """The family's call options checked (schema.check_family_options), None (its default) dropped;
    an option of another family is an error naming what this one takes."""
    options = {name: value for name, value in options.items() if value is not None}
    for name in options:
        if name not in SDXL_OPTIONS:  # no family's: what Python says of a misspelt keyword
            raise TypeError(f"got an unexpected keyword argument {name!r}")
    unknown = [name for name in options if name not in family.options]
    if unknown:
        takes = f"it takes {', '.join(family.options)}" if family.options else "it takes none"
        raise InvalidInputError(f"{', '.join(unknown)}: not an option of {family.name} models ({takes})")
    return check_family_options(options)
