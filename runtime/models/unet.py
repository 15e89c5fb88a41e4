"""The denoising UNet: (latents [+ extra channels], timestep, text hidden states) -> noise prediction."""

from typing import Callable

import numpy as np

from edgesd.sessions import Session


class UNet:
    def __init__(self, session: Callable[[], Session], in_channels: int):
        self._session = session
        self.in_channels = in_channels  # 4, or 9 for inpainting UNets (latents + mask + masked-image latents)

    def __call__(self, latents: np.ndarray, timestep, hidden_states: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        session = self._session()
        sample = latents if extra is None else np.concatenate([latents, extra], axis=1)
        feeds = {"sample": sample, "timestep": np.asarray(timestep, dtype=session.input_types["timestep"]),
                 "encoder_hidden_states": hidden_states}
        return session.run(feeds)[0]
