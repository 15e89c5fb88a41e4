"""Euler ancestral: an Euler step down to sigma_down, then fresh noise of size sigma_up, so that the
marginal at sigma_next is right (k-diffusion's `sample_euler_ancestral`, Crowson; eta = 1).

Ports diffusers 0.39.0 EulerAncestralDiscreteScheduler (scheduling_euler_ancestral_discrete.py).
Stochastic: every step draws one noise tensor shaped like the model output, the last step included.
Limitations: prediction_type "sample" is not supported (diffusers raises NotImplementedError too).
"""

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, SigmaScheduler

F32 = np.float32


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False,
    )

    def __init__(self, config):
        super().__init__(config)
        self.require("prediction_type", ("epsilon", "v_prediction"))
        self.require("timestep_spacing", common.SPACINGS)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name, snr_floor=True)

    def schedule(self, num_inference_steps):
        c = self.config
        timesteps = common.spaced_timesteps(c["timestep_spacing"], num_inference_steps, c["num_train_timesteps"],
                                            c["steps_offset"], F32)
        sigmas = common.interp_sigmas(timesteps, common.train_sigmas(self.alphas_cumprod))
        return Schedule(timesteps, np.concatenate([sigmas, [0.0]]).astype(F32))

    def step(self, plan, model_output, index, sample, state, noise):
        position = plan.begin + index
        sigma_from, sigma_to = plan.schedule.sigmas[position], plan.schedule.sigmas[position + 1]
        x0 = common.predict_x0(self.config["prediction_type"], model_output, sample, sigma_from)
        from2, to2 = sigma_from * sigma_from, sigma_to * sigma_to
        sigma_up = np.sqrt(to2 * (from2 - to2) / from2)
        sigma_down = np.sqrt(to2 - sigma_up * sigma_up)
        derivative = (sample - x0) / sigma_from
        prev_sample = sample + derivative * (sigma_down - sigma_from)
        return prev_sample + noise.randn(model_output.shape) * sigma_up, None
