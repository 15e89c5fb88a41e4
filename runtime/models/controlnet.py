"""A ControlNet: (latents, timestep, conditioning, control image) -> residuals for the UNet's inputs, by
name, scaled as diffusers' ControlNetModel scales them (its graph is traced at scale 1: the conditioning
scale, and guess mode's per-block scales from 0.1 to 1, are applied here).

ONNX takes no lists, so the residuals are flat named tensors: the UNet's inputs
`down_block_additional_residual_<i>` and `mid_block_additional_residual`, the ControlNet's outputs
`down_block_res_sample_<i>` and `mid_block_res_sample` (edgesd.export.controlnet writes both)."""

from typing import Callable

import numpy as np

from edgesd.sessions import Session

DOWN_RESIDUAL, MID_RESIDUAL = "down_block_additional_residual_{}", "mid_block_additional_residual"
DOWN_OUTPUT, MID_OUTPUT = "down_block_res_sample_{}", "mid_block_res_sample"


def residual_count(unet_config: dict) -> int:
    """How many down-block residuals a UNet (or ControlNet) of this config passes: conv_in's output,
    each down block's resnets, and each downsampler (every block but the last)."""
    layers, levels = unet_config["layers_per_block"], len(unet_config["block_out_channels"])
    return 1 + (sum(layers) if isinstance(layers, list) else layers * levels) + levels - 1


def residual_names(count: int) -> list[str]:
    """The UNet's residual inputs, the mid block's last."""
    return [DOWN_RESIDUAL.format(i) for i in range(count)] + [MID_RESIDUAL]


class ControlNet:
    def __init__(self, session: Callable[[], Session], residuals: int, global_pool: bool = False):
        self._session = session
        self.residuals = residuals
        self.global_pool = global_pool  # its residuals are pooled (in its graph); guess mode without block scales

    def __call__(self, sample: np.ndarray, timestep, conditioning: dict[str, np.ndarray], image: np.ndarray,
                 scale: float, guess_mode: bool) -> dict[str, np.ndarray]:
        session = self._session()
        feeds = {"sample": sample, "timestep": np.asarray(timestep, dtype=session.input_types["timestep"]),
                 "controlnet_cond": image, **{k: v for k, v in conditioning.items() if k in session.input_types}}
        outputs = session.run(feeds)
        produced = [DOWN_OUTPUT.format(i) for i in range(self.residuals)] + [MID_OUTPUT]
        if guess_mode and not self.global_pool:  # torch.logspace(-1, 0, n) * scale: 0.1 for conv_in's .. 1 for the mid block's
            scales = np.logspace(-1, 0, len(produced)).astype(np.float32) * np.float32(scale)
        else:
            scales = [np.float32(scale)] * len(produced)
        return {name: outputs[out] * s for name, out, s in zip(residual_names(self.residuals), produced, scales)}
