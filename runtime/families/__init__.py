"""Model families: which submodels a family has and how a prompt becomes its UNet's conditioning.
The manifest's `family` picks one; a family not here is refused when the folder is opened.

SD 1.x and 2.x are one family in code (their differences live in the configs that the wrappers
read: VAE factor, prediction type, attention heads); SDXL (two text encoders, pooled embeddings,
time ids) would be the next entry, with a Conditioning of its own.
"""

from dataclasses import dataclass

import numpy as np

from edgesd.model_folder import SUBMODELS


@dataclass(frozen=True)
class Conditioning:
    hidden_states: np.ndarray  # (batch, 77, width): [negatives..., positives...] under guidance


@dataclass(frozen=True)
class Family:
    name: str
    submodels: tuple[str, ...]

    def prompts(self, prompt: str, negative_prompt: str | None, guided: bool) -> tuple[str, ...]:
        """What the text encoder runs on: the negative prompt ("" if none) first under guidance, as diffusers."""
        return (negative_prompt or "", prompt) if guided else (prompt,)

    def conditioning(self, hidden_states: np.ndarray, num_images: int) -> Conditioning:
        """Each prompt's states repeated num_images times, read-only: fed unchanged to every UNet
        call, so engines may keep them on the device."""
        states = np.repeat(hidden_states, num_images, axis=0)
        states.setflags(write=False)
        return Conditioning(states)


SD = Family("sd", SUBMODELS)
FAMILIES = {"sd1": SD, "sd2": SD, "sd": SD}  # "sd": an optimum folder of either version
