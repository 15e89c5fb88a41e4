"""DPM-Solver multistep: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (Algorithm 2, multistep second order "DPM++ 2M"; third order per Lu et al.,
"DPM-Solver", 2022), with the SDE variant DPM++ 2M SDE.

Ports diffusers 0.39.0 DPMSolverMultistepScheduler (scheduling_dpmsolver_multistep.py):
algorithm_type dpmsolver++ / sde-dpmsolver++ / dpmsolver, solver_order 1-3, solver_type midpoint /
heun, lower_order_final, euler_at_final, final_sigmas_type zero / sigma_min, karras / exponential /
lu-lambda sigmas, lambda_min_clipped, thresholding. sde-dpmsolver++ draws one noise tensor per step.
The previous converted model outputs travel in the state; the warm-up order counts the steps since
the plan started, as diffusers' lower_order_nums does after set_timesteps.
Limitations: algorithm_type sde-dpmsolver (deprecated), use_beta_sigmas (scipy), flow sigmas and
flow_prediction are not supported.
"""

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import MultistepScheduler, Schedule

F32 = np.float32


class DPMSolverMultistepScheduler(MultistepScheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        use_lu_lambdas=False, use_flow_sigmas=False, final_sigmas_type="zero", lambda_min_clipped=-float("inf"),
        variance_type=None, timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False,
        sigma_min=None, sigma_max=None,
    )

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        # diffusers maps configs written for DEIS / UniPC onto this solver the same way
        c["algorithm_type"] = "dpmsolver++" if c["algorithm_type"] == "deis" else c["algorithm_type"]
        c["solver_type"] = "midpoint" if c["solver_type"] in ("logrho", "bh1", "bh2") else c["solver_type"]
        for key, supported in [("algorithm_type", ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")),
                               ("solver_type", ("midpoint", "heun")), ("solver_order", (1, 2, 3)),
                               ("prediction_type", common.PREDICTION_TYPES), ("timestep_spacing", common.SPACINGS),
                               ("final_sigmas_type", ("zero", "sigma_min")), ("use_beta_sigmas", (False,)),
                               ("use_flow_sigmas", (False,))]:
            self.require(key, supported)
        if c["algorithm_type"] == "dpmsolver" and c["final_sigmas_type"] == "zero":
            common.require(self.name, "final_sigmas_type with algorithm_type='dpmsolver'", "zero", ("sigma_min",))
        common.require_one_sigma_spacing(self.name, c)
        self.alphas_cumprod = common.make_alphas_cumprod(c, self.name, snr_floor=True)

    def schedule(self, num_inference_steps):
        c, n = self.config, num_inference_steps
        train = common.train_sigmas(self.alphas_cumprod)
        alpha_t = np.sqrt(self.alphas_cumprod)
        lambdas = np.log(alpha_t) - np.log(np.sqrt(F32(1) - self.alphas_cumprod))
        clipped_idx = np.searchsorted(lambdas[::-1], c["lambda_min_clipped"])
        last = c["num_train_timesteps"] - int(clipped_idx)
        timesteps = common.multistep_timesteps(c["timestep_spacing"], n, c["num_train_timesteps"], last,
                                               c["steps_offset"])
        log_sigmas = np.log(train)
        round_t = c["beta_schedule"] != "squaredcos_cap_v2"
        if c["use_karras_sigmas"]:
            sigmas = common.karras_sigmas(*common.sigma_bounds(train[::-1], c), n)
            timesteps = common.sigma_to_t(sigmas, log_sigmas)
            timesteps = timesteps.round() if round_t else timesteps
        elif c["use_lu_lambdas"]:  # Lu et al.: uniform in log-SNR
            lambda_min, lambda_max = float(log_sigmas[0]), float(log_sigmas[-1])
            sigmas = np.exp(lambda_max + np.linspace(0, 1, n) * (lambda_min - lambda_max))
            timesteps = common.sigma_to_t(sigmas, log_sigmas)
            timesteps = timesteps.round() if round_t else timesteps
        elif c["use_exponential_sigmas"]:
            sigmas = common.exponential_sigmas(*common.sigma_bounds(train[::-1], c), n)
            timesteps = common.sigma_to_t(sigmas, log_sigmas)
        else:
            sigmas = common.interp_sigmas(timesteps, train)
        sigma_last = train[0] if c["final_sigmas_type"] == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(F32)
        return Schedule(timesteps.astype(np.int64), sigmas)

    def initial_state(self, plan):
        return ()  # converted model outputs of the previous steps, oldest first

    def step(self, plan, model_output, index, sample, state, noise):
        c = self.config
        position, count = plan.begin + index, len(plan.schedule.timesteps)
        lower_order_final = position == count - 1 and (
            c["euler_at_final"] or (c["lower_order_final"] and count < 15) or c["final_sigmas_type"] == "zero")
        lower_order_second = position == count - 2 and c["lower_order_final"] and count < 15
        outputs = (state + (self._convert(plan, model_output, position, sample),))[-c["solver_order"]:]
        warm = min(index, c["solver_order"])  # diffusers' lower_order_nums
        variance_noise = noise.randn(model_output.shape) if c["algorithm_type"] == "sde-dpmsolver++" else None
        if c["solver_order"] == 1 or warm < 1 or lower_order_final:
            order = 1
        elif c["solver_order"] == 2 or warm < 2 or lower_order_second:
            order = 2
        else:
            order = 3
        return self._update(plan.schedule.sigmas, position, outputs[-order:], sample, variance_noise), outputs

    def _convert(self, plan, model_output, position, sample):
        """The model output as DPM-Solver++ wants it (x0) or DPM-Solver (eps)."""
        c = self.config
        if c["variance_type"] in ("learned", "learned_range") and c["prediction_type"] == "epsilon":
            model_output = model_output[:, :3]
        alpha_t, sigma_t = common.sigma_to_alpha_sigma_t(plan.schedule.sigmas[position])
        if c["algorithm_type"] == "dpmsolver":
            eps = common.predict_epsilon(c["prediction_type"], model_output, sample, alpha_t, sigma_t)
            if c["thresholding"]:
                x0 = common.clip_or_threshold((sample - sigma_t * eps) / alpha_t, c)
                eps = (sample - alpha_t * x0) / sigma_t
            return eps
        return common.clip_or_threshold(common.predict_x0(c["prediction_type"], model_output, sample, sigma_t, alpha_t), c)

    def _update(self, sigmas, position, outputs, sample, noise):
        """First/second/third order multistep update from sigma_s0 = sigmas[position] to sigma_t."""
        c, order = self.config, len(outputs)
        alpha_t, sigma_t, lambda_t = common.lambda_of(sigmas[position + 1])
        alpha_s0, sigma_s0, lambda_s0 = common.lambda_of(sigmas[position])
        h = lambda_t - lambda_s0
        kind, m0 = c["algorithm_type"], outputs[-1]
        if order == 1:  # DDIM-like first order step: DPM-Solver++ eq. (5) / DPM-Solver eq. (3.7)
            if kind == "dpmsolver++":
                return sigma_t / sigma_s0 * sample - alpha_t * (common.exp32(-h) - 1.0) * m0
            if kind == "dpmsolver":
                return alpha_t / alpha_s0 * sample - sigma_t * (common.exp32(h) - 1.0) * m0
            return (sigma_t / sigma_s0 * common.exp32(-h) * sample + alpha_t * (1 - common.exp32(-2.0 * h)) * m0
                    + sigma_t * np.sqrt(1.0 - common.exp32(-2 * h)) * noise)
        lambda_s1 = common.lambda_of(sigmas[position - 1])[2]
        h_0 = lambda_s0 - lambda_s1
        r0 = h_0 / h
        d1_0 = 1.0 / r0 * (m0 - outputs[-2])
        if order == 2:
            return self._second_order(kind, c["solver_type"], sample, m0, d1_0, h, alpha_t, sigma_t, alpha_s0,
                                      sigma_s0, noise)
        h_1 = lambda_s1 - common.lambda_of(sigmas[position - 2])[2]
        r1 = h_1 / h
        d1_1 = 1.0 / r1 * (outputs[-2] - outputs[-3])
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1)
        e = common.exp32(-h)
        if kind == "dpmsolver++":
            return (sigma_t / sigma_s0 * sample - alpha_t * (e - 1.0) * m0 + alpha_t * ((e - 1.0) / h + 1.0) * d1
                    - alpha_t * ((e - 1.0 + h) / (h * h) - 0.5) * d2)
        if kind == "dpmsolver":
            e = common.exp32(h)
            return (alpha_t / alpha_s0 * sample - sigma_t * (e - 1.0) * m0 - sigma_t * ((e - 1.0) / h - 1.0) * d1
                    - sigma_t * ((e - 1.0 - h) / (h * h) - 0.5) * d2)
        e2 = common.exp32(-2.0 * h)
        return (sigma_t / sigma_s0 * e * sample + alpha_t * (1.0 - e2) * m0
                + alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0) * d1
                + alpha_t * ((1.0 - e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5) * d2
                + sigma_t * np.sqrt(1.0 - e2) * noise)

    @staticmethod
    def _second_order(kind, solver_type, sample, d0, d1, h, alpha_t, sigma_t, alpha_s0, sigma_s0, noise):
        """Multistep second order update: DPM-Solver++ Algorithm 2 (midpoint) or its heun variant."""
        if kind == "dpmsolver++":
            e = common.exp32(-h)
            if solver_type == "midpoint":
                return sigma_t / sigma_s0 * sample - alpha_t * (e - 1.0) * d0 - 0.5 * (alpha_t * (e - 1.0)) * d1
            return sigma_t / sigma_s0 * sample - alpha_t * (e - 1.0) * d0 + alpha_t * ((e - 1.0) / h + 1.0) * d1
        if kind == "dpmsolver":
            e = common.exp32(h)
            if solver_type == "midpoint":
                return alpha_t / alpha_s0 * sample - sigma_t * (e - 1.0) * d0 - 0.5 * (sigma_t * (e - 1.0)) * d1
            return alpha_t / alpha_s0 * sample - sigma_t * (e - 1.0) * d0 - sigma_t * ((e - 1.0) / h - 1.0) * d1
        e, e2 = common.exp32(-h), common.exp32(-2.0 * h)
        x = sigma_t / sigma_s0 * e * sample + alpha_t * (1 - e2) * d0
        if solver_type == "midpoint":
            x = x + 0.5 * (alpha_t * (1 - e2)) * d1
        else:
            x = x + alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0) * d1
        return x + sigma_t * np.sqrt(1.0 - e2) * noise
