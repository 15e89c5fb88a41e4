"""Math shared by the scheduler ports: noise schedules, timestep spacing, sigma schedules, and the
one conversion of a model output (epsilon / v_prediction / sample) into a predicted clean sample.

diffusers computes these with float32 torch tensors; the functions below do the same float32
operations in the same order, so a port that calls them matches diffusers to float32 rounding.
Where torch has its own arithmetic (linspace, cumprod) it is reproduced and the test says so.
"""

import math
from collections.abc import Mapping

import numpy as np

from edgesd.errors import UnsupportedSchedulerError

F32 = np.float32


# -- configuration --------------------------------------------------------------------------------


def require(scheduler: str, key: str, value, supported) -> None:
    """Raise UnsupportedSchedulerError unless `value` is one of `supported`."""
    if value not in supported:
        raise UnsupportedSchedulerError(
            f"{scheduler}: {key}={value!r} is not supported; supported: "
            f"{', '.join(repr(s) for s in supported)}. Change it in scheduler/scheduler_config.json "
            f"or choose another scheduler."
        )


def sigma_bounds(in_sigmas: np.ndarray, config: Mapping) -> tuple[float, float]:
    """(sigma_min, sigma_max): the config's values when set (diffusers reads them with hasattr, so
    they count even for classes that do not declare them), else the ends of `in_sigmas`."""
    low, high = config.get("sigma_min"), config.get("sigma_max")
    return (float(in_sigmas[-1]) if low is None else low, float(in_sigmas[0]) if high is None else high)


def require_one_sigma_spacing(scheduler: str, config: Mapping) -> None:
    """Karras and exponential sigmas exclude each other (diffusers raises too)."""
    if config["use_karras_sigmas"] and config["use_exponential_sigmas"]:
        require(scheduler, "use_karras_sigmas with use_exponential_sigmas", True, (False,))


def respace_sigmas(sigmas: np.ndarray, timesteps: np.ndarray, log_sigmas: np.ndarray, config: Mapping):
    """(sigmas, timesteps) re-spaced as Karras et al. (2022) or exponentially when the config asks,
    between `sigma_bounds`, with timesteps mapped back from the new sigmas."""
    if config["use_karras_sigmas"]:
        sigmas = karras_sigmas(*sigma_bounds(sigmas, config), len(timesteps))
    elif config["use_exponential_sigmas"]:
        sigmas = exponential_sigmas(*sigma_bounds(sigmas, config), len(timesteps))
    else:
        return sigmas, timesteps
    return sigmas, sigma_to_t(sigmas, log_sigmas)


# -- noise schedule -------------------------------------------------------------------------------


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=torch.float32), bit for bit: torch (CPU) computes the
    first half as fma(step, i, start) and the second half backwards from `end`, in float32."""
    start32, end32 = F32(start), F32(end)
    if steps == 1:
        return np.array([start32], F32)
    step = np.float64(F32((end32 - start32) / F32(steps - 1)))
    index = np.arange(steps)
    forward = (np.float64(start32) + step * index).astype(F32)  # exact product, one rounding: an fma
    backward = (np.float64(end32) - step * (steps - 1 - index)).astype(F32)
    return np.where(index < steps // 2, forward, backward)


def betas_for_alpha_bar(num_steps: int, transform: str = "cosine", max_beta: float = 0.999) -> np.ndarray:
    """Betas that discretise alpha_bar(t) (Nichol & Dhariwal 2021 for "cosine"), as diffusers does."""
    if transform == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif transform == "laplace":
        def alpha_bar(t):
            snr = math.exp(-0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6))
            return math.sqrt(snr / (1 + snr))
    else:  # "exp"
        def alpha_bar(t):
            return math.exp(t * -12.0)
    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return np.array(betas, F32)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def make_betas(config: Mapping, scheduler: str, schedules=BETA_SCHEDULES) -> np.ndarray:
    """The float32 betas for `config` (trained_betas wins, as in diffusers)."""
    n, start, end = config["num_train_timesteps"], config["beta_start"], config["beta_end"]
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], F32)
    require(scheduler, "beta_schedule", config["beta_schedule"], schedules)
    kind = config["beta_schedule"]
    if kind == "linear":
        return torch_linspace(start, end, n)
    if kind == "scaled_linear":
        root = torch_linspace(start**0.5, end**0.5, n)
        return root * root
    if kind == "sigmoid":
        x = torch_linspace(-6, 6, n)
        return (F32(1) / (F32(1) + np.exp(-x))) * F32(end - start) + F32(start)
    transform = {"squaredcos_cap_v2": "cosine", "laplace": "laplace", "exp": "exp"}[kind]
    return betas_for_alpha_bar(n, transform)


def cumprod(values: np.ndarray) -> np.ndarray:
    """torch.cumprod on a float32 CPU tensor: accumulated in float64, stored as float32."""
    return np.cumprod(values.astype(np.float64)).astype(F32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", Algorithm 1)."""
    alphas_bar_sqrt = np.sqrt(cumprod(F32(1) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return F32(1) - alphas


def make_alphas_cumprod(config: Mapping, scheduler: str, schedules=BETA_SCHEDULES, snr_floor: bool = False) -> np.ndarray:
    """alphas_cumprod for `config`; with rescale_betas_zero_snr the last value is 0, which the
    sigma-based schedulers replace by 2**-24 (`snr_floor`) so that sigma stays finite."""
    betas = make_betas(config, scheduler, schedules)
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = cumprod(F32(1) - betas)
    if config.get("rescale_betas_zero_snr") and snr_floor:
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every training timestep (float32)."""
    return np.sqrt((F32(1) - alphas_cumprod) / alphas_cumprod)


# -- timestep spacing ----------------------------------------------------------------------------

SPACINGS = ("linspace", "leading", "trailing")


def spaced_timesteps(spacing: str, n: int, num_train: int, steps_offset: int, dtype) -> np.ndarray:
    """Descending timesteps of `set_timesteps(n)` for the one-step-per-timestep schedulers
    (DDIM, DDPM, PNDM as int64; Euler, Heun, LMS as float32, where "linspace" is not rounded).
    See Table 2 of Lin et al. 2023 for leading/trailing/linspace."""
    if spacing == "linspace":
        steps = np.linspace(0, num_train - 1, n)
        steps = steps.round() if dtype == np.int64 else steps
    elif spacing == "leading":
        steps = (np.arange(0, n) * (num_train // n)).round() + steps_offset
    else:  # trailing
        steps = np.round(np.arange(num_train, 0, -num_train / n)) - 1
        return steps.astype(dtype)
    return steps[::-1].astype(dtype)


def multistep_timesteps(spacing: str, n: int, num_train: int, last_timestep: int, steps_offset: int) -> np.ndarray:
    """Descending int64 timesteps of the multistep solvers (DPMSolver, UniPC): n + 1 points with the
    last dropped, so the final step lands on sigma_min / zero instead of a timestep."""
    if spacing == "linspace":
        steps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        steps = (np.arange(0, n + 1) * (last_timestep // (n + 1))).round()[::-1][:-1].astype(np.int64)
        steps += steps_offset
    else:  # trailing
        steps = np.arange(last_timestep, 0, -num_train / n).round().astype(np.int64) - 1
    return steps


# -- sigma schedules -----------------------------------------------------------------------------


def interp_sigmas(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Training sigmas linearly interpolated at (possibly fractional) timesteps (float64)."""
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each sigma: interpolation in log-sigma between training steps."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 (EDM), eq. 5: sigmas evenly spaced in sigma**(1/rho) (float64)."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Sigmas evenly spaced in log(sigma) (float64)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def sigma_to_alpha_sigma_t(sigma):
    """(alpha_t, sigma_t) of the variance-preserving process whose noise-to-signal ratio is sigma."""
    alpha_t = 1 / np.sqrt(sigma * sigma + 1)
    return alpha_t, sigma * alpha_t


def log32(x):
    """float32 log of a float32 scalar, rounded once (log(0) = -inf, silently, as torch)."""
    with np.errstate(divide="ignore"):
        return F32(np.log(np.float64(x)))


def exp32(x):
    return F32(np.exp(np.float64(x)))


def expm1_32(x):
    return F32(np.expm1(np.float64(x)))


def lambda_of(sigma):
    """Half log-SNR, lambda = log(alpha_t) - log(sigma_t), as DPM-Solver and UniPC define it."""
    alpha_t, sigma_t = sigma_to_alpha_sigma_t(sigma)
    return alpha_t, sigma_t, log32(alpha_t) - log32(sigma_t)


# -- the model output ----------------------------------------------------------------------------

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def predict_x0(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, sigma, alpha=None) -> np.ndarray:
    """The clean sample x0 predicted by the model output. This is the one place where
    epsilon / v_prediction / sample outputs are interpreted.

    With `alpha` (variance preserving: sample = alpha * x0 + sigma * eps; DDIM, DPM-Solver, ...)
    or without (variance exploding, the k-diffusion form: sample = x0 + sigma * eps; Euler, Heun,
    LMS, whose UNet input was divided by sqrt(sigma**2 + 1)). v is Salimans & Ho 2022, eq. 9.
    """
    if prediction_type == "sample":
        return model_output
    if alpha is None:
        if prediction_type == "epsilon":
            return sample - sigma * model_output
        scale = sigma * sigma + 1
        return model_output * (-sigma / np.sqrt(scale)) + sample / scale
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    return alpha * sample - sigma * model_output


def predict_epsilon(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha, sigma) -> np.ndarray:
    """The noise eps predicted by the model output (variance-preserving form, see predict_x0)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - alpha * model_output) / sigma
    return alpha * model_output + sigma * sample


def threshold_sample(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, section 2.3): clip each sample to its
    `ratio` quantile of |x0| (at least 1, at most `max_value`) and divide by it."""
    flat = x0.reshape(x0.shape[0], -1)
    s = np.clip(np.quantile(np.abs(flat), ratio, axis=1).astype(F32), 1, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


def clip_or_threshold(x0: np.ndarray, config: Mapping) -> np.ndarray:
    """Apply `thresholding` or else `clip_sample` to a predicted x0, as the DDPM-family does."""
    if config.get("thresholding"):
        return threshold_sample(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config.get("clip_sample"):
        return np.clip(x0, -config["clip_sample_range"], config["clip_sample_range"])
    return x0
