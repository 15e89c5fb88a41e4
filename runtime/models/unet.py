"""The denoising UNet: (sample, timestep, conditioning) -> noise prediction. The sample is the latents,
with inpainting's mask and masked-image latents on extra channels for 9-channel UNets; the
conditioning is the family's named inputs (encoder_hidden_states, ...), fed by their names."""

from typing import Callable

import numpy as np

from edgesd.sessions import Session
from edgesd.sessions.base import output


class UNet:
    def __init__(self, session: Callable[[], Session], in_channels: int):
        self._session = session
        self.in_channels = in_channels  # 4, or 9 for inpainting UNets (latents + mask + masked-image latents)

    def __call__(self, sample: np.ndarray, timestep, conditioning: dict[str, np.ndarray]) -> np.ndarray:
        session = self._session()
        feeds = {"sample": sample, "timestep": np.asarray(timestep, dtype=session.input_types["timestep"]), **conditioning}
        return output(session.run(feeds), "out_sample")
