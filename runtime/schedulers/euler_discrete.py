"""Euler: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2 with the churn off (s_churn = 0): one Euler step of dx/dsigma = (x - x0) / sigma.

Ports diffusers 0.39.0 EulerDiscreteScheduler (scheduling_euler_discrete.py) with step()'s defaults
(s_churn = 0, so deterministic: the pipeline passes no churn). Supports karras and exponential
sigmas, interpolation_type linear/log_linear, timestep_type discrete/continuous, final_sigmas_type
zero/sigma_min and zero-terminal-SNR rescaling. Limitations: use_beta_sigmas (needs scipy) is not
supported.
"""

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, SigmaScheduler

F32 = np.float32


class EulerDiscreteScheduler(SigmaScheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False, use_exponential_sigmas=False,
        use_beta_sigmas=False, sigma_min=None, sigma_max=None, timestep_spacing="linspace", timestep_type="discrete",
        steps_offset=0, rescale_betas_zero_snr=False, final_sigmas_type="zero",
    )

    def __init__(self, config):
        super().__init__(config)
        for key, supported in [("prediction_type", common.PREDICTION_TYPES), ("timestep_spacing", common.SPACINGS),
                               ("interpolation_type", ("linear", "log_linear")),
                               ("timestep_type", ("discrete", "continuous")),
                               ("final_sigmas_type", ("zero", "sigma_min")), ("use_beta_sigmas", (False, None))]:
            self.require(key, supported)
        common.require_one_sigma_spacing(self.name, self.config)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name, snr_floor=True)

    def schedule(self, num_inference_steps):
        c, n = self.config, num_inference_steps
        timesteps = common.spaced_timesteps(c["timestep_spacing"], n, c["num_train_timesteps"], c["steps_offset"], F32)
        train = common.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        if c["interpolation_type"] == "linear":
            sigmas = common.interp_sigmas(timesteps, train)
        else:  # log_linear: n + 1 sigmas, as diffusers (the last one is never reached)
            sigmas = np.exp(common.torch_linspace(log_sigmas[-1], log_sigmas[0], n + 1))
        sigmas, timesteps = common.respace_sigmas(sigmas, timesteps, log_sigmas, c)
        sigma_last = train[0] if c["final_sigmas_type"] == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(F32)
        if c["timestep_type"] == "continuous" and c["prediction_type"] == "v_prediction":
            timesteps = np.array([F32(0.25) * common.log32(s) for s in sigmas[:-1]], F32)
        return Schedule(timesteps.astype(F32), sigmas)

    def step(self, plan, model_output, index, sample, state, noise):
        position = plan.begin + index
        sigma = plan.schedule.sigmas[position]
        sigma_hat = sigma  # sigma * (gamma + 1) with gamma = 0 (no churn)
        x0 = common.predict_x0(self.config["prediction_type"], model_output, sample, sigma_hat)
        derivative = (sample - x0) / sigma_hat
        dt = plan.schedule.sigmas[position + 1] - sigma_hat
        return sample + derivative * dt, None
