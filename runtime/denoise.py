"""The one denoising loop every task pipeline runs, and the guided prediction most of them use.

Written by hand (the runtime is torch-free), following diffusers' pipelines: per step, the UNet's
prediction on the scheduler-scaled latents (classifier-free guidance and any extra UNet inputs live
on that `predict` side, as k-diffusion's extra_args), the scheduler's step, then the task's
per-step work on the latents (`on_step`, e.g. inpainting's blend of the known region).
"""

import time
from typing import Callable

import numpy as np

from edgesd.schedulers.base import Plan

Predict = Callable[[np.ndarray, object], np.ndarray]  # (scaled latents, timestep) -> noise prediction
OnStep = Callable[[int, np.ndarray], np.ndarray]  # (step index, latents after the step) -> latents
Callback = Callable[[int, int, np.ndarray], bool | None]  # (step, total, latents); False cancels


def denoise(plan: Plan, predict: Predict, latents: np.ndarray, generator, callback: Callback | None = None,
            on_step: OnStep | None = None) -> tuple[np.ndarray, bool, list[float]]:
    """Run every step of `plan`: (latents, cancelled, seconds per step)."""
    state = plan.initial_state()
    step_times = []
    total = len(plan.timesteps)
    for i, t in enumerate(plan.timesteps):
        t0 = time.perf_counter()
        noise_pred = predict(plan.scale_model_input(latents, i), t)
        latents, state = plan.step(noise_pred, i, latents, state, generator)
        if on_step is not None:
            latents = on_step(i, latents)
        step_times.append(time.perf_counter() - t0)
        if callback is not None and callback(i + 1, total, latents) is False:
            return latents, True, step_times
    return latents, False, step_times


def guided(unet, conditioning: dict[str, np.ndarray], guidance_scale: float, extra: np.ndarray | None = None) -> Predict:
    """The UNet's prediction with classifier-free guidance as diffusers applies it (scale > 1: one
    batched call on [unconditional, conditional] latents, every conditioning input ordered the same way);
    `extra`: inputs concatenated to the latents on the channel axis (inpainting's mask and masked
    image latents), already doubled under guidance. The UNet's input is one buffer, allocated on the
    first step and refilled in place on the next ones (the extra channels are written once)."""
    copies = 2 if guidance_scale > 1 else 1
    scale = np.float32(guidance_scale)
    sample = None

    def predict(latents: np.ndarray, t) -> np.ndarray:
        nonlocal sample
        if copies == 1 and extra is None:
            return unet(latents, t, conditioning)
        n, channels = latents.shape[:2]
        if sample is None:
            width = channels + (0 if extra is None else extra.shape[1])
            sample = np.empty((copies * n, width, *latents.shape[2:]), np.float32)
            if extra is not None:
                sample[:, channels:] = extra
        for k in range(copies):
            sample[k * n : (k + 1) * n, :channels] = latents
        noise_pred = unet(sample, t, conditioning)
        if copies == 1:
            return noise_pred
        uncond, text = np.split(noise_pred, 2)
        return uncond + scale * (text - uncond)

    return predict
