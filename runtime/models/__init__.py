"""Typed submodel wrappers: each owns its engine inputs' names and dtypes, so pipelines speak in
arrays (prompts -> hidden states, latents -> noise, pixels <-> latents), not in feeds."""

from edgesd.models.controlnet import ControlNet
from edgesd.models.text_encoder import TextEncoder
from edgesd.models.unet import UNet
from edgesd.models.vae import Vae

__all__ = ["ControlNet", "TextEncoder", "UNet", "Vae"]
