"""DDPM: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models": ancestral sampling from
the posterior q(x_{t-1} | x_t, x_0), eq. 6-7, with x_0 predicted by the model.

Ports diffusers 0.39.0 DDPMScheduler (scheduling_ddpm.py). Draws one noise tensor per step except at
t = 0, as diffusers does. Limitations: variance_type "learned", "learned_range" (a UNet with twice
the output channels) and "fixed_large_log" (NaN in diffusers itself) are not supported.
"""

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, Scheduler

F32 = np.float32


class DDPMScheduler(Scheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        variance_type="fixed_small", clip_sample=True, prediction_type="epsilon", thresholding=False,
        dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
        steps_offset=0, rescale_betas_zero_snr=False,
    )

    def __init__(self, config):
        super().__init__(config)
        self.require("prediction_type", common.PREDICTION_TYPES)
        self.require("timestep_spacing", common.SPACINGS)
        self.require("variance_type", ("fixed_small", "fixed_small_log", "fixed_large"))
        schedules = (*common.BETA_SCHEDULES, "laplace", "sigmoid")
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name, schedules)

    def schedule(self, num_inference_steps):
        c = self.config
        return Schedule(common.spaced_timesteps(c["timestep_spacing"], num_inference_steps, c["num_train_timesteps"],
                                                c["steps_offset"], np.int64))

    def step(self, plan, model_output, index, sample, state, noise):
        position = plan.begin + index
        t = int(plan.timesteps[index])
        prev_t = int(plan.schedule.timesteps[position + 1]) if position + 1 < len(plan.schedule.timesteps) else -1
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else F32(1.0)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        x0 = common.predict_x0(self.config["prediction_type"], model_output, sample,
                               np.sqrt(beta_prod_t), np.sqrt(alpha_prod_t))
        x0 = common.clip_or_threshold(x0, self.config)
        # formula (7): mean of q(x_{t-1} | x_t, x_0)
        pred_original_sample_coeff = np.sqrt(alpha_prod_t_prev) * current_beta_t / beta_prod_t
        current_sample_coeff = np.sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * x0 + current_sample_coeff * sample
        if t > 0:
            variance_noise = noise.randn(model_output.shape)
            variance = max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, F32(1e-20))
            kind = self.config["variance_type"]
            if kind == "fixed_small":
                scale = np.sqrt(variance)
            elif kind == "fixed_small_log":
                scale = common.exp32(F32(0.5) * common.log32(variance))
            else:  # fixed_large
                scale = np.sqrt(current_beta_t)
            prev_sample = prev_sample + scale * variance_noise
        return prev_sample, None
