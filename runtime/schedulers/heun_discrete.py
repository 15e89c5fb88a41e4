"""Heun: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 1 (deterministic second-order sampler): an Euler step, then a correction with the slope at
its end averaged in; the last step (to sigma = 0) is Euler only.

Ports diffusers 0.39.0 HeunDiscreteScheduler (scheduling_heun_discrete.py). order = 2: the timesteps
interleave (t0, t1, t1, t2, t2, ...), two UNet calls per solver step, and strength truncation skips
2 entries per skipped step. The first half of a step travels in the state. Limitations:
use_beta_sigmas (needs scipy) is not supported.
"""

from typing import NamedTuple

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, SigmaScheduler

F32 = np.float32


class HeunHalfStep(NamedTuple):
    """What the Euler half of a step leaves for the correction."""

    derivative: np.ndarray
    dt: np.float32
    sample: np.ndarray


class HeunDiscreteScheduler(SigmaScheduler):
    order = 2
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear", trained_betas=None,
        prediction_type="epsilon", use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        clip_sample=False, clip_sample_range=1.0, timestep_spacing="linspace", steps_offset=0,
        sigma_min=None, sigma_max=None,
    )

    def __init__(self, config):
        super().__init__(config)
        self.require("prediction_type", common.PREDICTION_TYPES)
        self.require("timestep_spacing", common.SPACINGS)
        self.require("use_beta_sigmas", (False,))
        common.require_one_sigma_spacing(self.name, self.config)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name, (*common.BETA_SCHEDULES, "exp"))

    def schedule(self, num_inference_steps):
        c, n = self.config, num_inference_steps
        timesteps = common.spaced_timesteps(c["timestep_spacing"], n, c["num_train_timesteps"], c["steps_offset"], F32)
        train = common.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        sigmas = common.interp_sigmas(timesteps, train)
        sigmas, timesteps = common.respace_sigmas(sigmas, timesteps, log_sigmas, c)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]])
        timesteps = np.concatenate([timesteps[:1], timesteps[1:].repeat(2)]).astype(F32)
        return Schedule(timesteps, sigmas)

    def step(self, plan, model_output, index, sample, state, noise):
        position = plan.begin + index
        sigmas = plan.schedule.sigmas
        first_half = state is None
        if first_half:
            sigma, sigma_next = sigmas[position], sigmas[position + 1]
        else:
            sigma, sigma_next = sigmas[position - 1], sigmas[position]
        sigma_input = sigma if first_half else sigma_next
        x0 = common.predict_x0(self.config["prediction_type"], model_output, sample, sigma_input)
        if self.config["clip_sample"]:
            x0 = np.clip(x0, -self.config["clip_sample_range"], self.config["clip_sample_range"])
        if first_half:  # Euler step to sigma_next
            derivative = (sample - x0) / sigma
            dt = sigma_next - sigma
            return sample + derivative * dt, HeunHalfStep(derivative, dt, sample)
        # 2nd order correction: average the slopes at both ends, restart from the first half's sample
        derivative = (state.derivative + (sample - x0) / sigma_next) / 2
        return state.sample + derivative * state.dt, None
