"""LCM: Luo et al. 2023, "Latent Consistency Models" (Algorithm 1, multistep consistency sampling):
the consistency function f(x, t) = c_skip(t) x + c_out(t) x0(x, t), then re-noise to the next timestep.

Ports diffusers 0.39.0 LCMScheduler (scheduling_lcm.py) as StableDiffusionImg2ImgPipeline drives it:
set_timesteps(steps) with the default strength 1.0, then the pipeline's strength truncation (the LCM
img2img pipeline instead passes strength into set_timesteps; that is not what this port follows).
Stochastic: every step but the last draws one noise tensor. Timesteps are a subset of the
`original_inference_steps` distillation schedule, so steps may not exceed it.
"""

import numpy as np

from edgesd.errors import InvalidInputError
from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, Scheduler

F32 = np.float32
SIGMA_DATA = 0.5


class LCMScheduler(Scheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        trained_betas=None, original_inference_steps=50, clip_sample=False, clip_sample_range=1.0,
        set_alpha_to_one=True, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, timestep_scaling=10.0, rescale_betas_zero_snr=False,
    )

    def __init__(self, config):
        super().__init__(config)
        self.require("prediction_type", common.PREDICTION_TYPES)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name)
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def schedule(self, num_inference_steps):
        original_steps = self.config["original_inference_steps"]
        if original_steps > self.config["num_train_timesteps"]:
            raise InvalidInputError(f"{self.name}: original_inference_steps={original_steps} exceeds "
                                    f"num_train_timesteps={self.config['num_train_timesteps']}; fix the scheduler config")
        if num_inference_steps > original_steps:
            raise InvalidInputError(f"{self.name} can run at most original_inference_steps={original_steps} steps, "
                                    f"got num_inference_steps={num_inference_steps}; use fewer steps")
        k = self.config["num_train_timesteps"] // original_steps
        origin = (np.arange(1, original_steps + 1) * k - 1)[::-1]  # the distillation schedule
        indices = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        return Schedule(origin[indices].astype(np.int64))

    def step(self, plan, model_output, index, sample, state, noise):
        position, all_timesteps = plan.begin + index, plan.schedule.timesteps
        timestep = int(all_timesteps[position])
        prev_timestep = int(all_timesteps[position + 1]) if position + 1 < len(all_timesteps) else timestep
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        # boundary condition scalings: c_skip(0) = 1, c_out(0) = 0
        scaled = F32(timestep) * F32(self.config["timestep_scaling"])
        c_skip = SIGMA_DATA**2 / (scaled * scaled + SIGMA_DATA**2)
        c_out = scaled / np.sqrt(scaled * scaled + SIGMA_DATA**2)
        x0 = common.predict_x0(self.config["prediction_type"], model_output, sample,
                               np.sqrt(1 - alpha_prod_t), np.sqrt(alpha_prod_t))
        x0 = common.clip_or_threshold(x0, self.config)
        denoised = c_out * x0 + c_skip * sample
        if position == plan.num_inference_steps - 1:
            return denoised, None
        return np.sqrt(alpha_prod_t_prev) * denoised + np.sqrt(beta_prod_t_prev) * noise.randn(model_output.shape), None
