"""DDIM: Song, Meng & Ermon 2020, "Denoising Diffusion Implicit Models", eq. 12 with eta = 0.

Ports diffusers 0.39.0 DDIMScheduler (scheduling_ddim.py), with eta = 0 as
StableDiffusionImg2ImgPipeline uses it by default: deterministic, no noise drawn.
Limitations: eta > 0 (and use_clipped_model_output) are not available through this interface.
"""

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, Scheduler

F32 = np.float32


class DDIMScheduler(Scheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        clip_sample=True, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon", thresholding=False,
        dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config):
        super().__init__(config)
        self.require("prediction_type", common.PREDICTION_TYPES)
        self.require("timestep_spacing", common.SPACINGS)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name)
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def schedule(self, num_inference_steps):
        c = self.config
        return Schedule(common.spaced_timesteps(c["timestep_spacing"], num_inference_steps, c["num_train_timesteps"],
                                                c["steps_offset"], np.int64))

    def step(self, plan, model_output, index, sample, state, noise):
        timestep = int(plan.timesteps[index])
        # diffusers steps back by num_train // steps whatever the spacing
        prev_timestep = timestep - self.config["num_train_timesteps"] // plan.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        alpha, sigma = np.sqrt(alpha_prod_t), np.sqrt(F32(1) - alpha_prod_t)
        prediction = self.config["prediction_type"]
        pred_original_sample = common.predict_x0(prediction, model_output, sample, sigma, alpha)
        pred_epsilon = common.predict_epsilon(prediction, model_output, sample, alpha, sigma)
        pred_original_sample = common.clip_or_threshold(pred_original_sample, self.config)
        # formula (12): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps
        pred_sample_direction = np.sqrt(F32(1) - alpha_prod_t_prev) * pred_epsilon
        return np.sqrt(alpha_prod_t_prev) * pred_original_sample + pred_sample_direction, None
