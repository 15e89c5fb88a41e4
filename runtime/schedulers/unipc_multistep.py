"""UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models": the UniP predictor (Algorithm 2) and, from the second step on, the UniC corrector
(Algorithm 1) using the model output at the new point, in data (x0) or noise prediction form.

Ports diffusers 0.39.0 UniPCMultistepScheduler (scheduling_unipc_multistep.py): solver_type bh2
(default) / bh1, any solver_order, predict_x0, lower_order_final, disable_corrector,
final_sigmas_type, karras / exponential sigmas, thresholding. The state carries the previous
converted model outputs, the sample the last predictor started from and that predictor's order.
Limitations: solver_type bh1 and predict_x0=False need final_sigmas_type "sigma_min" (with "zero"
diffusers' last step computes inf * 0 = NaN). Not supported: solver_p (another scheduler object),
flow sigmas / flow_prediction, dynamic shifting (diffusers needs `mu` for it, which img2img never
passes) and beta sigmas (scipy).
"""

from typing import NamedTuple

import numpy as np

from edgesd.schedulers import common
from edgesd.schedulers.base import MultistepScheduler, Schedule

F32 = np.float32


class UniPCState(NamedTuple):
    outputs: tuple = ()  # converted model outputs of the previous steps, oldest first
    last_sample: np.ndarray | None = None  # the sample the previous predictor started from
    last_order: int = 0  # the previous predictor's order (the corrector reuses it)


class UniPCMultistepScheduler(MultistepScheduler):
    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, predict_x0=True, solver_type="bh2", lower_order_final=True, disable_corrector=[],
        solver_p=None, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        use_flow_sigmas=False, timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero",
        rescale_betas_zero_snr=False, use_dynamic_shifting=False, sigma_min=None, sigma_max=None,
        shift_terminal=None,
    )

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        # diffusers maps DPM-Solver's solver types onto bh2 the same way
        c["solver_type"] = "bh2" if c["solver_type"] in ("midpoint", "heun", "logrho") else c["solver_type"]
        for key, supported in [("solver_type", ("bh1", "bh2")), ("prediction_type", common.PREDICTION_TYPES),
                               ("timestep_spacing", common.SPACINGS), ("final_sigmas_type", ("zero", "sigma_min")),
                               ("use_beta_sigmas", (False,)), ("use_flow_sigmas", (False,)),
                               ("use_dynamic_shifting", (False,)), ("solver_p", (None,)), ("shift_terminal", (None,))]:
            self.require(key, supported)
        if int(c["solver_order"]) != c["solver_order"] or c["solver_order"] < 1:
            common.require(self.name, "solver_order", c["solver_order"], (1, 2, 3))
        if c["final_sigmas_type"] == "zero" and (c["solver_type"] == "bh1" or not c["predict_x0"]):
            # the last step to sigma = 0 has h = inf: diffusers returns NaN there (inf * 0)
            what = "solver_type='bh1'" if c["solver_type"] == "bh1" else "predict_x0=False"
            common.require(self.name, f"final_sigmas_type with {what}", "zero", ("sigma_min",))
        common.require_one_sigma_spacing(self.name, c)
        self.alphas_cumprod = common.make_alphas_cumprod(c, self.name, snr_floor=True)

    def schedule(self, num_inference_steps):
        c, n = self.config, num_inference_steps
        train = common.train_sigmas(self.alphas_cumprod)
        timesteps = common.multistep_timesteps(c["timestep_spacing"], n, c["num_train_timesteps"],
                                               c["num_train_timesteps"], c["steps_offset"])
        log_sigmas = np.log(train)
        if c["use_karras_sigmas"] or c["use_exponential_sigmas"]:
            convert = common.karras_sigmas if c["use_karras_sigmas"] else common.exponential_sigmas
            sigmas = convert(*common.sigma_bounds(train[::-1], c), n)
            timesteps = common.sigma_to_t(sigmas, log_sigmas)
            timesteps = timesteps.round() if c["use_karras_sigmas"] else timesteps
            sigma_last = sigmas[-1]
        else:
            sigmas = common.interp_sigmas(timesteps, train)
            sigma_last = train[0]
        sigma_last = sigma_last if c["final_sigmas_type"] == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(F32)
        return Schedule(timesteps.astype(np.int64), sigmas)

    def initial_state(self, plan):
        return UniPCState()

    def step(self, plan, model_output, index, sample, state, noise):
        c = self.config
        position, count = plan.begin + index, len(plan.schedule.timesteps)
        converted = self._convert(plan.schedule.sigmas[position], model_output, sample)
        use_corrector = position > 0 and position - 1 not in c["disable_corrector"] and state.last_sample is not None
        if use_corrector:  # UniC: refine the sample the last predictor made, using this model output
            sample = self._corrector(plan.schedule.sigmas, position, state, converted, sample)
        outputs = (state.outputs + (converted,))[-c["solver_order"]:]
        order = min(c["solver_order"], count - position) if c["lower_order_final"] else c["solver_order"]
        order = min(order, min(index, c["solver_order"]) + 1)  # warm-up: diffusers' lower_order_nums + 1
        prev_sample = self._predictor(plan.schedule.sigmas, position, outputs, sample, order)
        return prev_sample, UniPCState(outputs, sample, order)

    def _convert(self, sigma, model_output, sample):
        alpha_t, sigma_t = common.sigma_to_alpha_sigma_t(sigma)
        if self.config["predict_x0"]:
            x0 = common.predict_x0(self.config["prediction_type"], model_output, sample, sigma_t, alpha_t)
            return common.clip_or_threshold(x0, self.config)
        return common.predict_epsilon(self.config["prediction_type"], model_output, sample, alpha_t, sigma_t)

    @np.errstate(divide="ignore", invalid="ignore")  # h = 0 or inf at the ends: unused NaNs, as in torch
    def _coefficients(self, sigmas, t_index, s0_index, earlier, order):
        """Shared by UniP and UniC: lambdas, rks, the phi-function vector b and B(h) (paper eq. 6-8)."""
        alpha_t, sigma_t, lambda_t = common.lambda_of(sigmas[t_index])
        alpha_s0, sigma_s0, lambda_s0 = common.lambda_of(sigmas[s0_index])
        h = lambda_t - lambda_s0
        rks = [(common.lambda_of(sigmas[si])[2] - lambda_s0) / h for si in earlier[: order - 1]] + [F32(1.0)]
        hh = -h if self.config["predict_x0"] else h
        h_phi_1 = common.expm1_32(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config["solver_type"] == "bh1" else common.expm1_32(hh)
        factorial, b = 1, []
        for i in range(1, order + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        rks, b = np.array(rks, F32), np.array(b, F32)
        powers = [np.ones_like(rks)]  # R[i] = rks ** i, multiplied out as torch.pow does for small i
        for _ in range(1, order):
            powers.append(powers[-1] * rks)
        powers = np.stack(powers)
        return alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, b_h, rks, powers, b

    def _base(self, x, m0, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1):
        if self.config["predict_x0"]:
            return sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0, alpha_t
        return alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0, sigma_t

    def _predictor(self, sigmas, position, outputs, sample, order):
        """UniP-p (bh): from sigmas[position] to sigmas[position + 1]."""
        earlier = [position - i for i in range(1, order)]
        alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, b_h, rks, powers, b = self._coefficients(
            sigmas, position + 1, position, earlier, order)
        m0 = outputs[-1]
        d1s = [(outputs[-(i + 1)] - m0) / rks[i - 1] for i in range(1, order)]
        x_t_, scale = self._base(sample, m0, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1)
        if not d1s:
            return x_t_ - scale * b_h * 0
        rhos_p = np.array([0.5], F32) if order == 2 else np.linalg.solve(powers[:-1, :-1], b[:-1]).astype(F32)
        return x_t_ - scale * b_h * _weighted_sum(rhos_p, d1s)

    def _corrector(self, sigmas, position, state, this_output, this_sample):
        """UniC (bh): correct the step sigmas[position - 1] -> sigmas[position] with the new output."""
        order, outputs = state.last_order, state.outputs
        earlier = [position - (i + 1) for i in range(1, order)]
        alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, b_h, rks, powers, b = self._coefficients(
            sigmas, position, position - 1, earlier, order)
        m0 = outputs[-1]
        d1s = [(outputs[-(i + 1)] - m0) / rks[i - 1] for i in range(1, order)]
        rhos_c = np.array([0.5], F32) if order == 1 else np.linalg.solve(powers, b).astype(F32)
        x_t_, scale = self._base(state.last_sample, m0, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1)
        corr_res = _weighted_sum(rhos_c[:-1], d1s) if d1s else 0
        return x_t_ - scale * b_h * (corr_res + rhos_c[-1] * (this_output - m0))


def _weighted_sum(weights, arrays):
    """einsum('k,bkc...->bc...', weights, stack(arrays, 1))."""
    total = weights[0] * arrays[0]
    for w, a in zip(weights[1:], arrays[1:]):
        total = total + w * a
    return total
