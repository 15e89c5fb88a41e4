"""Time one scheduler step (and scale_model_input) per scheduler on a 1x4x128x128 float32 latent,
the size of a 1024x1024 image's latents, to set against a UNet step.

    python bench/scheduler_step.py [--repeats 200] [--steps 25]

Each timing is the median of `--repeats` calls of the same step, at the middle of a `--steps` run
(multistep schedulers then carry their full history). Stochastic schedulers draw their noise inside
step; that draw (edgesd's torch-matching generator) is timed with them.
"""

import argparse
import statistics
import time

import numpy as np

from edgesd.generator import TorchGenerator
from edgesd.schedulers import SUPPORTED, from_config

SHAPE = (1, 4, 128, 128)
SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
EXTRA = {"DPMSolverMultistepScheduler (karras, sde)": ("DPMSolverMultistepScheduler",
                                                       dict(use_karras_sigmas=True, algorithm_type="sde-dpmsolver++"))}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench(label: str, class_name: str, config: dict, steps: int, repeats: int):
    plan = from_config(config, class_name).plan(steps, 1.0)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal(SHAPE, dtype=np.float32)
    noise = TorchGenerator(1)
    state = plan.initial_state()
    middle = len(plan.timesteps) // 2
    for i in range(middle):  # walk to the middle so multistep state is full
        sample, state = plan.step(0.1 * sample, i, sample, state, noise)
    model_output = 0.1 * sample
    step_ms = median_ms(lambda: plan.step(model_output, middle, sample, state, noise), repeats)
    scale_ms = median_ms(lambda: plan.scale_model_input(sample, middle), repeats)
    return label, step_ms, scale_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    cases = [(name, name, SD15) for name in SUPPORTED]
    cases += [(label, name, {**SD15, **extra}) for label, (name, extra) in EXTRA.items()]
    rows = [bench(label, name, config, args.steps, args.repeats) for label, name, config in cases]
    print(f"latent {'x'.join(map(str, SHAPE))} float32, median of {args.repeats}, step {args.steps // 2} of {args.steps}")
    print(f"{'scheduler':44s} {'step ms':>8s} {'scale ms':>9s}  (stochastic ones include their noise draw)")
    for label, step_ms, scale_ms in rows:
        print(f"{label:44s} {step_ms:8.3f} {scale_ms:9.3f}")


if __name__ == "__main__":
    main()
