"""LMS: a linear multistep (Adams-Bashforth) method on the probability-flow ODE dx/dsigma = (x - x0) / sigma,
order up to 4, as in k-diffusion's `sample_lms` (Crowson; after Karras et al. 2022).

Ports diffusers 0.39.0 LMSDiscreteScheduler (scheduling_lms_discrete.py) with step(order=4), the
default the pipeline uses. diffusers integrates each Lagrange basis polynomial with
scipy.integrate.quad; here the polynomial (degree <= 3) is integrated exactly with 4-point
Gauss-Legendre, so coefficients agree to ~1e-7 relative. The order comes from the step's position in
the full schedule while only the derivatives seen since the plan started are used, as in diffusers.
Limitations: use_beta_sigmas (needs scipy) is not supported.
"""

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import Schedule, SigmaScheduler

F32 = np.float32
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(4)


class LMSDiscreteScheduler(SigmaScheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, prediction_type="epsilon",
        timestep_spacing="linspace", steps_offset=0, sigma_min=None, sigma_max=None,
    )
    max_order = 4

    def __init__(self, config):
        super().__init__(config)
        self.require("prediction_type", common.PREDICTION_TYPES)
        self.require("timestep_spacing", common.SPACINGS)
        self.require("use_beta_sigmas", (False,))
        common.require_one_sigma_spacing(self.name, self.config)
        self.alphas_cumprod = common.make_alphas_cumprod(self.config, self.name)

    def schedule(self, num_inference_steps):
        c = self.config
        timesteps = common.spaced_timesteps(c["timestep_spacing"], num_inference_steps, c["num_train_timesteps"],
                                            c["steps_offset"], F32)
        train = common.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        sigmas = common.interp_sigmas(timesteps, train)
        if c["use_karras_sigmas"]:  # LMS's karras ignores config sigma_min/max, unlike its exponential
            sigmas = common.karras_sigmas(float(sigmas[-1]), float(sigmas[0]), num_inference_steps)
            timesteps = common.sigma_to_t(sigmas, log_sigmas)
        elif c["use_exponential_sigmas"]:
            sigmas = common.exponential_sigmas(*common.sigma_bounds(sigmas, c), num_inference_steps)
            timesteps = common.sigma_to_t(sigmas, log_sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        return Schedule(timesteps.astype(F32), sigmas)

    def initial_state(self, plan):
        return ()  # derivatives (sample - x0) / sigma of the steps so far, oldest first (at most 4)

    def step(self, plan, model_output, index, sample, state, noise):
        position = plan.begin + index
        sigma = plan.schedule.sigmas[position]
        x0 = common.predict_x0(self.config["prediction_type"], model_output, sample, sigma)
        derivatives = (state + ((sample - x0) / sigma,))[-self.max_order:]
        order = min(position + 1, self.max_order)
        coeffs = [self._coefficient(plan.schedule.sigmas, order, position, j) for j in range(order)]
        prev_sample = sample + sum(coeff * d for coeff, d in zip(coeffs, reversed(derivatives)))
        return prev_sample, derivatives

    @staticmethod
    def _coefficient(sigmas, order, t, current):
        """Integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of node t - current."""
        nodes = sigmas[t - np.arange(order)].astype(np.float64)
        a, b = float(sigmas[t]), float(sigmas[t + 1])
        tau = (b - a) / 2 * _NODES + (a + b) / 2
        basis = np.ones_like(tau)
        for k in range(order):
            if k != current:
                basis *= (tau - nodes[k]) / (nodes[current] - nodes[k])
        return float((b - a) / 2 * np.dot(_WEIGHTS, basis))
