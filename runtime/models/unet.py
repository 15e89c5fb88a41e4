"""The denoising UNet: (sample, timestep, conditioning) -> noise prediction. The sample is the latents,
with inpainting's mask and masked-image latents on extra channels for 9-channel UNets; the
conditioning is the family's named inputs (encoder_hidden_states, ...), fed by their names; a UNet
edgesd exported also takes ControlNet residuals by name (zeros where no ControlNet acts)."""

from typing import Callable

import numpy as np

from edgesd.models.controlnet import residual_count, residual_names
from edgesd.sessions import Session
from edgesd.sessions.base import output


def no_residuals(unet_config: dict) -> dict[str, np.ndarray]:
    """The ControlNet residual inputs of a UNet edgesd exported, as fed when no ControlNet acts: a
    (1, 1, 1, 1) zero each, which its additions broadcast (its output as without the inputs)."""
    return dict.fromkeys(residual_names(residual_count(unet_config)), np.zeros((1, 1, 1, 1), np.float32))


class UNet:
    def __init__(self, session: Callable[[], Session], in_channels: int, residual_inputs: dict[str, np.ndarray] | None = None):
        self._session = session
        self.in_channels = in_channels  # 4, or 9 for inpainting UNets (latents + mask + masked-image latents)
        self._no_residuals = residual_inputs or {}  # its ControlNet residual inputs (no_residuals), if it has them

    def __call__(self, sample: np.ndarray, timestep, conditioning: dict[str, np.ndarray],
                 residuals: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """`residuals`: ControlNets' (summed), by input name; None: none acts (zeros are fed)."""
        session = self._session()
        feeds = {"sample": sample, "timestep": np.asarray(timestep, dtype=session.input_types["timestep"]), **conditioning}
        feeds.update(residuals or self._no_residuals)
        return output(session.run(feeds), "out_sample")
