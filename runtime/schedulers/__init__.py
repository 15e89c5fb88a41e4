"""Diffusion schedulers in numpy, ported by hand from diffusers 0.39.0.

They are written by hand, not imported, because the runtime must be torch-free: diffusers'
schedulers compute with torch tensors. Each port is one file named after the diffusers class (its
module name without "scheduling_"), follows that class's arithmetic in float32 step by step, and is
tested against it step by step (tests/test_schedulers.py). Shared math lives in `common`, the
interface in `base`:

    from edgesd.schedulers import from_config
    plan = from_config(scheduler_config).plan(num_inference_steps, strength)
    latents = plan.add_noise(latents, noise)
    state = plan.initial_state()
    for i, t in enumerate(plan.timesteps):
        noise_pred = unet(plan.scale_model_input(latents, i), t)
        latents, state = plan.step(noise_pred, i, latents, state, generator)
"""

from collections.abc import Mapping

from edgesd.errors import UnsupportedSchedulerError
from edgesd.schedulers.base import NoiseSource, Plan, Schedule, Scheduler
from edgesd.schedulers.ddim import DDIMScheduler
from edgesd.schedulers.ddpm import DDPMScheduler
from edgesd.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler
from edgesd.schedulers.euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from edgesd.schedulers.euler_discrete import EulerDiscreteScheduler
from edgesd.schedulers.heun_discrete import HeunDiscreteScheduler
from edgesd.schedulers.lcm import LCMScheduler
from edgesd.schedulers.lms_discrete import LMSDiscreteScheduler
from edgesd.schedulers.pndm import PNDMScheduler
from edgesd.schedulers.unipc_multistep import UniPCMultistepScheduler

_CLASSES = {cls.__name__: cls for cls in (
    DDIMScheduler, DDPMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler,
    UniPCMultistepScheduler, LCMScheduler,
)}
SUPPORTED: tuple[str, ...] = tuple(_CLASSES)


def from_config(config: Mapping, class_name: str | None = None) -> Scheduler:
    """Build a scheduler from diffusers' scheduler_config.json contents, as diffusers'
    `<class_name>.from_config(config)` does: `class_name` (default: the config's `_class_name`) picks
    the algorithm, fields that class reads are taken from the config, all others are ignored."""
    name = class_name or config.get("_class_name")
    if not isinstance(name, str) or name not in _CLASSES:
        raise UnsupportedSchedulerError(
            f"scheduler {name!r} is not supported; supported: {', '.join(SUPPORTED)}. "
            "Pick one of them (scheduler=..., CLI --scheduler)")
    return _CLASSES[name](config)


__all__ = ["SUPPORTED", "from_config", "Scheduler", "Plan", "Schedule", "NoiseSource", *SUPPORTED]
