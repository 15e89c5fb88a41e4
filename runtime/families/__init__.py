"""Model families: which submodels a family has and how a prompt becomes its UNet's conditioning,
a dictionary of *named* UNet inputs (the guidance wrapper batches and the UNet wrapper feeds whatever
names it holds, so neither changes when a family adds one). The manifest's `family` picks one; a
family not here is refused by `family_of` before any weights load.

SD 1.x and 2.x are one family in code (their differences live in the configs that the wrappers
read: VAE factor, prediction type, attention heads); SDXL (two text encoders, pooled embeddings,
time ids: `text_embeds`, `time_ids` beside `encoder_hidden_states`) would be the next entry.
"""

from dataclasses import dataclass

import numpy as np

from edgesd.errors import ModelFolderError
from edgesd.schema import SUBMODELS
from edgesd.sessions.base import output


Conditioning = dict[str, np.ndarray]  # UNet input name -> array, batch-ordered [negatives..., positives...]


@dataclass(frozen=True)
class Family:
    name: str
    submodels: tuple[str, ...]

    def prompts(self, prompt: str, negative_prompt: str | None, guided: bool) -> tuple[str, ...]:
        """What the text encoder runs on: the negative prompt ("" if none) first under guidance, as diffusers."""
        return (negative_prompt or "", prompt) if guided else (prompt,)

    def conditioning(self, encoded: dict[str, np.ndarray], num_images: int) -> Conditioning:
        """The UNet's text inputs from the text encoder's outputs (by name): each prompt's last hidden
        states repeated num_images times, read-only: fed unchanged to every UNet call, so engines may
        keep them on the device."""
        states = np.repeat(output(encoded, "last_hidden_state"), num_images, axis=0)
        states.setflags(write=False)
        return {"encoder_hidden_states": states}


SD = Family("sd", SUBMODELS)
FAMILIES = {"sd1": SD, "sd2": SD, "sd": SD}  # "sd": an optimum folder of either version


def family_of(folder) -> Family:
    """The family a model folder's manifest names, or why this edgesd cannot run it."""
    family = FAMILIES.get(folder.manifest.get("family"))
    if family is None:
        raise ModelFolderError(f"{folder.path} is a {folder.manifest.get('family')!r}-family model; this edgesd runs "
                               f"{', '.join(FAMILIES)} (SD 1.x/2.x) models")
    return family
