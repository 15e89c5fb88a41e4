"""edgesd: Stable Diffusion img2img on edge devices, without torch at inference time."""

__version__ = "0.1.0"
