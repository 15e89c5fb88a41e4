"""The VAE: pixels -> latent distribution moments -> sampled, scaled latents; latents -> pixels.
Tiled above its native size when asked (low-memory mode), as diffusers' enable_tiling(). A tiny VAE
(TAESD) encodes to latents directly (nothing is sampled) and has its own scaling factor (1); it can
replace the decoder alone (fast previews), taking the model's scaled latents as they are."""

from typing import Callable

import numpy as np

from edgesd.sessions import Session
from edgesd.sessions.base import output
from edgesd.vae_tiling import tiled


class Vae:
    def __init__(self, encoder: Callable[[], Session], decoder: Callable[[], Session], scale_factor: int,
                 scaling_factor: float, tile: int, sampled: bool = True, decoder_scaling_factor: float | None = None):
        self._encoder, self._decoder = encoder, decoder
        self.scale_factor = scale_factor  # pixels per latent side
        self.scaling_factor = scaling_factor  # latents are scaled by it after encoding
        self.decoder_scaling_factor = scaling_factor if decoder_scaling_factor is None else decoder_scaling_factor
        self.sampled = sampled  # the encoder gives a distribution's moments (else latents)
        self.tile = tile  # the native image size: the tile side when tiling
        self.tiling = False

    def moments(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [-1, 1] -> (N, 2 * channels, H / f, W / f): mean and log-variance (a tiny
        VAE: the latents, (N, channels, H / f, W / f))."""
        encoder = self._encoder()
        return self._run(lambda x: output(encoder.run({"sample": x}), "latent_parameters"), pixels, self.tile, self.tile // self.scale_factor)

    def sample(self, moments: np.ndarray, generator) -> np.ndarray:
        """Scaled latents drawn from the distribution (one draw of the generator), as diffusers; a
        tiny VAE's latents are only scaled (no draw: diffusers' retrieve_latents takes them as they are)."""
        if not self.sampled:
            return (np.float32(self.scaling_factor) * moments).astype(np.float32)
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        return (np.float32(self.scaling_factor) * (mean + std * generator.randn(mean.shape))).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents -> (N, 3, H, W) pixels in about [-1, 1]."""
        decoder = self._decoder()
        return self._run(lambda z: output(decoder.run({"latent_sample": z}), "sample"), latents / np.float32(self.decoder_scaling_factor),
                         self.tile // self.scale_factor, self.tile)

    def _run(self, run, x: np.ndarray, in_tile: int, out_tile: int) -> np.ndarray:
        if self.tiling and max(x.shape[2:]) > in_tile:
            return tiled(run, x, in_tile, out_tile)
        return run(x)
