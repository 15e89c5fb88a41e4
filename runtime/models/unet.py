"""The denoising UNet: (sample, timestep, text hidden states) -> noise prediction; the sample is the
latents, with inpainting's mask and masked-image latents on extra channels for 9-channel UNets."""

from typing import Callable

import numpy as np

from edgesd.sessions import Session


class UNet:
    def __init__(self, session: Callable[[], Session], in_channels: int):
        self._session = session
        self.in_channels = in_channels  # 4, or 9 for inpainting UNets (latents + mask + masked-image latents)

    def __call__(self, sample: np.ndarray, timestep, hidden_states: np.ndarray) -> np.ndarray:
        session = self._session()
        feeds = {"sample": sample, "timestep": np.asarray(timestep, dtype=session.input_types["timestep"]),
                 "encoder_hidden_states": hidden_states}
        return session.run(feeds)[0]
