"""The one denoising loop every task pipeline runs, and the guided prediction most of them use.

Written by hand (the runtime is torch-free), following diffusers' pipelines: per step, the UNet's
prediction on the scheduler-scaled latents (classifier-free guidance, ControlNet residuals and any
extra UNet inputs live on that `predict` side, as k-diffusion's extra_args), the scheduler's step,
then the task's per-step work on the latents (`on_step`, e.g. inpainting's blend of the known region).
"""

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgesd.schedulers.base import Plan

Predict = Callable[[np.ndarray, object, int], np.ndarray]  # (scaled latents, timestep, step index) -> noise prediction
OnStep = Callable[[int, np.ndarray], np.ndarray]  # (step index, latents after the step) -> latents
Callback = Callable[[int, int, np.ndarray], bool | str | None]  # (step, total, latents); False cancels, STOP stops
STOP = "stop"  # a callback's answer that ends the loop early, the latents so far decoded (diffusers' and A1111's interrupt)


def denoise(plan: Plan, predict: Predict, latents: np.ndarray, generator, callback: Callback | None = None,
            on_step: OnStep | None = None) -> tuple[np.ndarray, bool, list[float]]:
    """Run every step of `plan` (fewer if the callback answers STOP): (latents, cancelled, seconds per step)."""
    state = plan.initial_state()
    step_times = []
    total = len(plan.timesteps)
    for i, t in enumerate(plan.timesteps):
        t0 = time.perf_counter()
        noise_pred = predict(plan.scale_model_input(latents, i), t, i)
        latents, state = plan.step(noise_pred, i, latents, state, generator)
        if on_step is not None:
            latents = on_step(i, latents)
        step_times.append(time.perf_counter() - t0)
        answer = None if callback is None else callback(i + 1, total, latents)
        if answer is False:
            return latents, True, step_times
        if answer == STOP:
            break
    return latents, False, step_times


@dataclass(frozen=True)
class Control:
    """One ControlNet's part in a call, as diffusers' ControlNet pipelines take it: the net
    (edgesd.models.ControlNet), its preprocessed control image (one row per image of the batch, in
    [0, 1]), its conditioning scale, and the fraction of the steps it acts on [start, end]."""
    net: Callable
    image: np.ndarray
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


def controlled(controls: list[Control], conditioning: dict[str, np.ndarray], copies: int, guess_mode: bool, steps: int):
    """(latents, timestep, step index) -> the ControlNets' residuals summed (None where none acts at
    that step), as diffusers' ControlNet pipelines: under guidance each runs on both halves, in guess
    mode on the conditional half only (the unconditional half's residuals zero); a net outside its
    [start, end] is not run (diffusers multiplies its residuals by 0)."""
    conditional = guess_mode and copies == 2
    inputs = {k: v[len(v) // 2:] for k, v in conditioning.items()} if conditional else conditioning
    images = [c.image if conditional or copies == 1 else np.concatenate([c.image] * copies) for c in controls]

    def residuals(latents: np.ndarray, t, i: int) -> dict[str, np.ndarray] | None:
        sample = latents if copies == 1 or conditional else np.concatenate([latents] * copies)
        total = None
        for control, image in zip(controls, images):
            if i / steps < control.start or (i + 1) / steps > control.end:
                continue
            found = control.net(sample, t, inputs, image, control.scale, guess_mode)
            total = found if total is None else {name: total[name] + found[name] for name in total}
        if total is not None and conditional:
            total = {name: np.concatenate([np.zeros_like(value), value]) for name, value in total.items()}
        return total

    return residuals


def guided(unet, conditioning: dict[str, np.ndarray], guidance_scale: float, extra: np.ndarray | None = None,
           controls: list[Control] = (), guess_mode: bool = False, steps: int = 0) -> Predict:
    """The UNet's prediction with classifier-free guidance as diffusers applies it (scale > 1: one
    batched call on [unconditional, conditional] latents, every conditioning input ordered the same way);
    `extra`: inputs concatenated to the latents on the channel axis (inpainting's mask and masked
    image latents), already doubled under guidance; `controls`: ControlNets whose residuals the UNet
    adds (see `controlled`; `steps`: how many the call runs). The UNet's input is one buffer,
    allocated on the first step and refilled in place on the next ones (the extra channels are
    written once)."""
    copies = 2 if guidance_scale > 1 else 1
    scale = np.float32(guidance_scale)
    sample = None
    residuals = controlled(controls, conditioning, copies, guess_mode, steps) if controls else lambda *_: None

    def predict(latents: np.ndarray, t, i: int) -> np.ndarray:
        nonlocal sample
        if copies == 1 and extra is None:
            return unet(latents, t, conditioning, residuals(latents, t, i))
        n, channels = latents.shape[:2]
        if sample is None:
            width = channels + (0 if extra is None else extra.shape[1])
            sample = np.empty((copies * n, width, *latents.shape[2:]), np.float32)
            if extra is not None:
                sample[:, channels:] = extra
        for k in range(copies):
            sample[k * n : (k + 1) * n, :channels] = latents
        noise_pred = unet(sample, t, conditioning, residuals(latents, t, i))
        if copies == 1:
            return noise_pred
        uncond, text = np.split(noise_pred, 2)
        return uncond + scale * (text - uncond)

    return predict
