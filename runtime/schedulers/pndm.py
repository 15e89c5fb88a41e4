"""PNDM / PLMS: Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds": a linear multistep (Adams-Bashforth) method on the DDIM transfer function (eq. 11-12).

Ports diffusers 0.39.0 PNDMScheduler (scheduling_pndm.py) as Stable Diffusion 1.x configures it
(skip_prk_steps=True): the first step is a pseudo-improved-Euler step that evaluates the model twice
at the same timestep, then PLMS of growing order up to 4. The Runge-Kutta warm-up (skip_prk_steps
False) is not supported. diffusers counts steps from set_timesteps on; so does this port (the step
index), so an img2img run starts its warm-up wherever strength puts it, exactly as diffusers does.
"""

from typing import NamedTuple

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, Scheduler

F32 = np.float32


class PNDMState(NamedTuple):
    ets: tuple = ()  # the last (up to 4) model outputs, oldest first
    cur_sample: np.ndarray | None = None  # the sample the pseudo-improved-Euler step started from


class PNDMScheduler(Scheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        skip_prk_steps=False, set_alpha_to_one=False, prediction_type="epsilon", timestep_spacing="leading",
        steps_offset=0,
    )

    def __init__(self, config):
        super().__init__(config)
        self.require("skip_prk_steps", (True,))
        self.require("prediction_type", ("epsilon", "v_prediction"))
        self.require("timestep_spacing", common.SPACINGS)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name)
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def schedule(self, num_inference_steps):
        c = self.config
        steps = common.spaced_timesteps(c["timestep_spacing"], num_inference_steps, c["num_train_timesteps"],
                                        c["steps_offset"], np.int64)
        # PLMS timesteps: the second one repeated (the pseudo-improved-Euler step evaluates it twice)
        return Schedule(np.concatenate([steps[:1], steps[1:2], steps[1:]]).astype(np.int64))

    def initial_state(self, plan):
        return PNDMState()

    def step(self, plan, model_output, index, sample, state, noise):
        """`index` plays diffusers' `counter`: both start at 0 when the plan (set_timesteps) starts."""
        ratio = self.config["num_train_timesteps"] // plan.num_inference_steps
        timestep = int(plan.timesteps[index])
        prev_timestep = timestep - ratio
        ets, cur_sample = state
        if index != 1:
            ets = ets[-3:] + (model_output,)
        else:
            prev_timestep, timestep = timestep, timestep + ratio
        if len(ets) == 1 and index == 0:
            cur_sample = sample
        elif len(ets) == 1 and index == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, cur_sample = cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        return self._prev_sample(sample, timestep, prev_timestep, model_output), PNDMState(ets, cur_sample)

    def _prev_sample(self, sample, timestep, prev_timestep, model_output):
        """Formula (9) of the PNDM paper: the DDIM transfer x_t -> x_{t-delta} given eps."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = common.predict_epsilon("v_prediction", model_output, sample,
                                                  np.sqrt(alpha_prod_t), np.sqrt(beta_prod_t))
        sample_coeff = np.sqrt(alpha_prod_t_prev / alpha_prod_t)
        denom = alpha_prod_t * np.sqrt(beta_prod_t_prev) + np.sqrt(alpha_prod_t * beta_prod_t * alpha_prod_t_prev)
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom
