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
# The sampler names of AUTOMATIC1111's web UI -> (diffusers class, config overrides), as diffusers'
# scheduler docs map them ("PLMS" is PNDM's); each with the names ComfyUI and k-diffusion give it.
SAMPLERS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, ("euler_ancestral", "k_euler_a")),
    "Euler": ("EulerDiscreteScheduler", {}, ("euler", "k_euler")),
    "LMS": ("LMSDiscreteScheduler", {}, ("lms", "k_lms")),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, ("k_lms_ka",)),
    "Heun": ("HeunDiscreteScheduler", {}, ("heun", "k_heun")),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}, ("dpmpp_2m", "k_dpmpp_2m")),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, ("k_dpmpp_2m_ka",)),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, ("dpmpp_2m_sde", "k_dpmpp_2m_sde")),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
                            ("k_dpmpp_2m_sde_ka",)),
    "DDIM": ("DDIMScheduler", {}, ("ddim",)),
    "PLMS": ("PNDMScheduler", {}, ("pndm", "plms")),
    "UniPC": ("UniPCMultistepScheduler", {}, ("uni_pc", "unipc")),
    "LCM": ("LCMScheduler", {}, ("lcm",)),
    "DDPM": ("DDPMScheduler", {}, ("ddpm",)),
}
_BY_NAME = {key.lower(): name for name, (_, _, aliases) in SAMPLERS.items() for key in (name, *aliases)}


def sampler(name: str) -> tuple[str, dict] | None:
    """(diffusers class, config overrides) of an A1111/ComfyUI sampler name (any case), or None. " Karras"
    after a sampler name or a diffusers class name whose scheduler takes Karras sigmas (A1111's schedule
    type since 1.9) asks for them: "EulerDiscreteScheduler Karras" is diffusers' use_karras_sigmas=True."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key in _BY_NAME:
        return SAMPLERS[_BY_NAME[key]][:2]
    if not key.endswith(" karras"):
        return None
    base = key.removesuffix(" karras").strip()
    class_name, overrides = SAMPLERS[_BY_NAME[base]][:2] if base in _BY_NAME else \
        (next((c for c in _CLASSES if c.lower() == base), None), {})
    if class_name is None or "use_karras_sigmas" not in _CLASSES[class_name].defaults:
        return None
    return class_name, {**overrides, "use_karras_sigmas": True}


def from_config(config: Mapping, class_name: str | None = None) -> Scheduler:
    """Build a scheduler from diffusers' scheduler_config.json contents, as diffusers'
    `<class_name>.from_config(config)` does: `class_name` (default: the config's `_class_name`) picks
    the algorithm, fields that class reads are taken from the config, all others are ignored.
    `class_name` may be an A1111 sampler name (SAMPLERS), e.g. "DPM++ 2M Karras"."""
    name = class_name or config.get("_class_name")
    if (named := sampler(name)) is not None:
        name, overrides = named
        config = {**config, **overrides}
    if not isinstance(name, str) or name not in _CLASSES:
        raise UnsupportedSchedulerError(
            f"scheduler {name!r} is not supported; supported: {', '.join(SUPPORTED)}, or a sampler name: "
            f"{', '.join(SAMPLERS)}. Pick one of them (scheduler=..., CLI --scheduler)")
    return _CLASSES[name](config)


__all__ = ["SUPPORTED", "SAMPLERS", "sampler", "from_config", "Scheduler", "Plan", "Schedule", "NoiseSource",
           *SUPPORTED]
