"""The scheduler interface.

A `Scheduler` is built from a diffusers scheduler config. `plan(steps, strength)` freezes everything
that depends on those settings into a `Plan`; the pipeline then only talks to the plan:

    plan = scheduler.plan(num_inference_steps, strength)
    latents = plan.add_noise(latents, noise)
    state = plan.initial_state()
    for i, t in enumerate(plan.timesteps):
        model_output = unet(plan.scale_model_input(latents, i), t)
        latents, state = plan.step(model_output, i, latents, state, generator)

There are no hidden counters: `i` is the position in `plan.timesteps`, and whatever a multistep
method remembers (previous model outputs, the first half of a Heun step) travels in `state`,
an immutable value. A plan can be reused, and two loops can share one.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from edgesd.errors import InvalidInputError
from edgesd.schedulers import common

F32 = np.float32


class NoiseSource(Protocol):
    """Where stochastic schedulers draw their noise (edgesd's torch-matching generator)."""

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal float32 noise of `shape`, in torch.randn's order for the same seed."""
        ...


@dataclass(frozen=True)
class Schedule:
    """What diffusers' `set_timesteps(n)` computes, for all n steps."""

    timesteps: np.ndarray  # every timestep, diffusers' dtype (int64, or float32 for sigma schedulers)
    sigmas: np.ndarray | None = None  # float32: sigmas[k] goes with timesteps[k], then the final sigma


@dataclass(frozen=True, eq=False)
class Plan:
    """A scheduler frozen for (num_inference_steps, strength), img2img-truncated as diffusers does."""

    scheduler: "Scheduler"
    num_inference_steps: int
    strength: float
    schedule: Schedule
    begin: int  # position of timesteps[0] in schedule.timesteps (diffusers' begin_index)
    timesteps: np.ndarray  # what the UNet gets, one per call

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int = 0) -> np.ndarray:
        """Noise clean latents to timesteps[index]: 0 is the img2img start; inpainting re-noises the
        known region to the next step's level (as diffusers' add_noise does after step `index - 1`)."""
        if len(self.timesteps) == 0:
            raise InvalidInputError("this plan has no denoising step: increase strength or num_inference_steps")
        return self.scheduler.add_noise(self, original, noise, index)

    @property
    def init_noise_sigma(self) -> np.float32:
        """The spread of pure-noise starting latents (diffusers' init_noise_sigma)."""
        return self.scheduler.init_noise_sigma(self)

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        """The UNet input for step `index` (some schedulers divide by sqrt(sigma**2 + 1))."""
        return self.scheduler.scale_model_input(self, sample, index)

    def initial_state(self) -> Any:
        return self.scheduler.initial_state(self)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray, state: Any,
             noise: NoiseSource | None = None) -> tuple[np.ndarray, Any]:
        """One denoising step: (model output at timesteps[index], sample, state) -> (next sample,
        next state); start from `initial_state()`. `noise` is drawn from only by stochastic
        schedulers (DDPM, EulerAncestral, LCM, sde-dpmsolver++), exactly as diffusers draws it."""
        model_output = np.asarray(model_output, F32)
        return self.scheduler.step(self, model_output, index, np.asarray(sample, F32), state, noise)


class Scheduler:
    """Base of the ports. Subclasses set `defaults` (the config fields the diffusers class reads,
    with its defaults), check the config in `__init__`, and implement `schedule` and `step`."""

    order: ClassVar[int] = 1  # UNet calls per solver step (Heun: 2)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Mapping):
        self.config = {key: config.get(key, value) for key, value in self.defaults.items()}
        self.name = type(self).__name__

    def require(self, key: str, supported) -> None:
        common.require(self.name, key, self.config[key], supported)

    def plan(self, num_inference_steps: int, strength: float = 1.0, denoising_start: float | None = None,
             denoising_end: float | None = None) -> Plan:
        """Freeze the schedule for these settings. As diffusers' img2img: k = int(steps * strength)
        steps are run, starting (steps - k) * order entries into the full schedule. As its SDXL
        pipelines' "ensemble of expert denoisers": `denoising_start` (a fraction of the training
        schedule, strength then unused) starts at the first timestep below it, and `denoising_end`
        stops before the first below it (a base hands its latents to a refiner there)."""
        if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
            raise InvalidInputError(f"num_inference_steps must be a positive integer, got {num_inference_steps}")
        if num_inference_steps > self.config["num_train_timesteps"]:
            raise InvalidInputError(
                f"num_inference_steps={num_inference_steps} exceeds the {self.config['num_train_timesteps']} "
                "timesteps the model was trained with; use fewer steps")
        if not 0 <= strength <= 1:
            raise InvalidInputError(f"strength must be between 0 and 1, got {strength}")
        num_inference_steps = int(num_inference_steps)
        schedule = self.schedule(num_inference_steps)
        for array in (schedule.timesteps, schedule.sigmas):
            if array is not None:
                array.setflags(write=False)  # and so the views of it below
        if denoising_start is None:
            init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
            begin = max(num_inference_steps - init_timestep, 0) * self.order
        else:
            below = int((schedule.timesteps < self._cutoff(denoising_start)).sum())
            if self.order == 2 and below % 2 == 0:  # as diffusers: a 2nd-order step is not split
                below += 1
            begin = len(schedule.timesteps) - below
        timesteps = schedule.timesteps[begin:]
        if denoising_end is not None:
            timesteps = timesteps[: int((timesteps >= self._cutoff(denoising_end)).sum())]
        return Plan(self, num_inference_steps, strength, schedule, begin, timesteps)

    def _cutoff(self, fraction: float) -> int:
        """The training timestep a fraction of the denoising is done at (diffusers' discrete_timestep_cutoff)."""
        total = self.config["num_train_timesteps"]
        return int(round(total - fraction * total))

    # -- what subclasses implement / override ---------------------------------------------------

    def schedule(self, num_inference_steps: int) -> Schedule:
        raise NotImplementedError

    def step(self, plan: Plan, model_output, index: int, sample, state, noise):
        raise NotImplementedError

    def initial_state(self, plan: Plan) -> Any:
        return None

    def scale_model_input(self, plan: Plan, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def add_noise(self, plan: Plan, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """Forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM eq. 4)."""
        alpha_prod = self.alphas_cumprod[int(plan.timesteps[index])]
        return np.sqrt(alpha_prod) * original + np.sqrt(F32(1) - alpha_prod) * noise

    def init_noise_sigma(self, plan: Plan) -> np.float32:
        return F32(1)


class SigmaScheduler(Scheduler):
    """Schedulers in the k-diffusion form (Karras et al. 2022): the sample is x0 + sigma * eps and
    the UNet sees it divided by sqrt(sigma**2 + 1)."""

    def scale_model_input(self, plan: Plan, sample: np.ndarray, index: int) -> np.ndarray:
        sigma = plan.schedule.sigmas[plan.begin + index]
        return sample / np.sqrt(sigma * sigma + 1)

    def add_noise(self, plan: Plan, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return original + noise * plan.schedule.sigmas[plan.begin + index]

    def init_noise_sigma(self, plan: Plan) -> np.float32:
        """The largest sigma, with the UNet-input scaling folded in unless the spacing starts at T."""
        top = F32(plan.schedule.sigmas.max())
        return top if self.config.get("timestep_spacing") in ("linspace", "trailing") else np.sqrt(top * top + F32(1))


class MultistepScheduler(Scheduler):
    """DPM-Solver and UniPC: variance-preserving sigmas, UNet input unscaled."""

    def add_noise(self, plan: Plan, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        alpha_t, sigma_t = common.sigma_to_alpha_sigma_t(plan.schedule.sigmas[plan.begin + index])
        return alpha_t * original + sigma_t * noise
