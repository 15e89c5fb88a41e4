"""edgesd's numpy schedulers against diffusers' own, step by step, in img2img order.

Both sides get the same config, steps and strength, the same clean latents and initial noise, and a
closed-form fake UNet; diffusers' scheduler is driven exactly as StableDiffusionImg2ImgPipeline
drives it (set_timesteps, strength truncation, set_begin_index, add_noise at timesteps[:1], then
scale_model_input / step per timestep). Compared: the timesteps (dtype included), and the
sample after add_noise, after every scale_model_input and after every step.

Stochastic schedulers get a torch.Generator on the diffusers side and, on ours, a noise source that
calls torch.randn on an identically seeded generator, so only the schedulers are under test here
(edgesd's own torch-matching generator is tested on its own).

Tolerance, per compared array: rtol = 1e-5 with atol = 1e-5 * (largest |value| the reference run
has reached so far); timesteps: int64 exactly, float32 to 1e-6 relative.

Why not bit-exact: the ports do diffusers' float32 operations in diffusers' order (elementwise
float32 +, -, *, / round identically in numpy and torch), but the float32 scalars come from
sqrt/log/exp, and torch's CPU float32 versions are not correctly rounded (on this machine ~15% of
torch's float32 sqrt results are 1 ulp off) while numpy's are; float timesteps derived from sigmas
(karras, ...) inherit that ulp. Each scalar may differ by ~1 ulp (6e-8 relative); that enters once
per step and adds up over at most 50 UNet calls, so 1e-7 to 1e-6 of the run's scale is expected.
Observed over the whole matrix: at most 2.4e-6 (LCM's single step from t = 999 on linear betas,
where x0 = (x - sqrt(1 - a) eps) / sqrt(a) cancels), so 1e-5 keeps a margin of at least 4x; the
one run conditioned too badly for that is listed, with its reason, in ILL_CONDITIONED.

Why the run's scale: float32 errors are relative to the operands, and a step x + d * dt that
cancels (zero-SNR runs start at sigma = 4096 and end near 1; "sample" prediction lands on x0) keeps
the absolute error of its large inputs, in diffusers as here. The comparison stays sharp: starting
one step off moves the samples by far more than the tolerance (test_off_by_one_is_caught).
"""

import inspect
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # numpy 2 vs diffusers' np.array(tensor)
              pytest.mark.filterwarnings("ignore:.*algorithm_type dpmsolver is deprecated:FutureWarning")]

from edgesd.errors import InvalidInputError, UnsupportedSchedulerError  # noqa: E402
from edgesd import schedulers  # noqa: E402
from edgesd.schedulers import SUPPORTED, common, from_config  # noqa: E402

RTOL = 1e-5
TIMESTEP_RTOL = 1e-6
STEPS = (1, 2, 4, 10, 25)
STRENGTHS = (0.1, 0.3, 0.5, 0.75, 1.0)
SHAPE = (2, 4, 8, 8)

# Stable Diffusion 1.5's scheduler_config.json
SD15 = dict(_class_name="PNDMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
            steps_offset=1, trained_betas=None)
VARIANTS = {
    "sd15": {},
    "sd2-trailing": dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    "sd2-linspace": dict(prediction_type="v_prediction", timestep_spacing="linspace"),
    "leading": dict(timestep_spacing="leading"),
    "sample": dict(prediction_type="sample"),
    "karras": dict(use_karras_sigmas=True),
    "karras-v": dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    "exponential": dict(use_exponential_sigmas=True),
    "karras-bounds": dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0),  # read even if undeclared
    "exponential-bounds": dict(use_exponential_sigmas=True, sigma_min=0.1, sigma_max=10.0),
    "zero-snr": dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    "alpha-one": dict(set_alpha_to_one=True),
    "clip": dict(clip_sample=True, clip_sample_range=0.5),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, steps_offset=0),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "trained-betas": dict(trained_betas=np.linspace(0.0001, 0.02, 1000).tolist()),
    "sigma-min": dict(final_sigmas_type="sigma_min"),
    # class-specific options
    "fixed-small-log": dict(variance_type="fixed_small_log"),
    "fixed-large": dict(variance_type="fixed_large"),
    "sigmoid": dict(beta_schedule="sigmoid"),
    "log-linear": dict(interpolation_type="log_linear"),
    "continuous-v": dict(timestep_type="continuous", prediction_type="v_prediction"),
    "heun-exp": dict(beta_schedule="exp"),
    "sde": dict(algorithm_type="sde-dpmsolver++"),
    "sde-karras-heun": dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, solver_type="heun"),
    "order3": dict(solver_order=3),
    "sde-order3": dict(algorithm_type="sde-dpmsolver++", solver_order=3),
    "dpmsolver": dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", prediction_type="v_prediction"),
    "dpmsolver-order3": dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_order=3),
    "no-lower-order-final": dict(lower_order_final=False, final_sigmas_type="sigma_min"),
    "euler-at-final": dict(euler_at_final=True, final_sigmas_type="sigma_min"),
    "lu-lambdas": dict(use_lu_lambdas=True),
    "lambda-clipped": dict(lambda_min_clipped=-5.1, timestep_spacing="leading"),
    "bh1": dict(solver_type="bh1", final_sigmas_type="sigma_min"),
    "predict-eps": dict(predict_x0=False, final_sigmas_type="sigma_min", prediction_type="v_prediction"),
    "disable-corrector": dict(disable_corrector=[0, 3]),
    "karras-sigma-min": dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
    "lcm-original-30": dict(original_inference_steps=30, timestep_scaling=5.0),
}
COMMON = ("sd15", "sd2-trailing", "sd2-linspace", "linear", "cosine")
CASES = {
    "DDIMScheduler": (*COMMON, "sample", "zero-snr", "alpha-one", "clip", "threshold", "trained-betas"),
    "DDPMScheduler": (*COMMON, "sample", "zero-snr", "clip", "threshold", "fixed-small-log", "fixed-large", "sigmoid"),
    "PNDMScheduler": (*COMMON, "alpha-one"),
    "LMSDiscreteScheduler": (*COMMON, "leading", "sample", "karras", "exponential", "karras-bounds",
                             "exponential-bounds"),
    "EulerDiscreteScheduler": (*COMMON, "leading", "sample", "karras", "karras-v", "exponential", "karras-bounds",
                               "exponential-bounds", "zero-snr",
                               "sigma-min", "log-linear", "continuous-v"),
    # (cosine: diffusers' own sigma_down is NaN there, sqrt of a rounding-negative number)
    "EulerAncestralDiscreteScheduler": ("sd15", "sd2-trailing", "sd2-linspace", "linear", "leading", "zero-snr"),
    "HeunDiscreteScheduler": (*COMMON, "leading", "sample", "karras", "exponential", "karras-bounds",
                              "exponential-bounds", "clip", "heun-exp"),
    "DPMSolverMultistepScheduler": (*COMMON, "sample", "karras", "karras-v", "exponential", "karras-bounds",
                                    "exponential-bounds", "zero-snr",
                                    "sigma-min", "sde", "sde-karras-heun", "order3", "sde-order3", "dpmsolver",
                                    "dpmsolver-order3", "no-lower-order-final", "euler-at-final", "lu-lambdas",
                                    "lambda-clipped", "threshold"),
    "UniPCMultistepScheduler": (*COMMON, "sample", "karras", "karras-v", "exponential", "karras-bounds",
                                "exponential-bounds", "zero-snr", "sigma-min",
                                "karras-sigma-min", "order3", "bh1", "predict-eps", "disable-corrector",
                                "threshold"),
    "LCMScheduler": (*COMMON, "sample", "zero-snr", "alpha-one", "clip", "threshold", "lcm-original-30"),
}


# Runs whose float32 arithmetic is too ill-conditioned to compare at 1e-5, in diffusers as here:
# two Heun steps on the "exp" betas go from sigma 403 to 0.11 in one Euler step, and the correction
# divides by 0.11 and multiplies by -403, amplifying a 1-ulp difference in the UNet input ~2000 times
# (observed 1.2e-5 of the run's scale).
ILL_CONDITIONED = {("HeunDiscreteScheduler", "heun-exp", 2)}


def config_for(variant: str) -> dict:
    return {**SD15, **VARIANTS[variant]}


def fake_unet(x: np.ndarray, t: float) -> np.ndarray:
    """Deterministic, smooth, not trivially zero; computed the same way for both sides."""
    x = x.astype(np.float64)
    return (x * (abs(t) / (abs(t) + 1)) + 0.1 * np.cos(3 * x)).astype(np.float32)


class TorchNoise:
    """edgesd's noise interface on torch.randn, seeded like the diffusers side's generator."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, shape):
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32).numpy()


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32)


def diffusers_run(name, config, steps, strength, seed=0, shift=0, limit=None):
    """(timesteps, samples) as StableDiffusionImg2ImgPipeline drives the scheduler; `shift` moves
    the start by that many schedule entries (to fake an off-by-one), `limit` caps the UNet calls."""
    latents, noise = inputs(seed)
    scheduler = getattr(diffusers, name).from_config(config)
    scheduler.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    begin = max(steps - init_timestep, 0) * scheduler.order + shift
    timesteps = scheduler.timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    if len(timesteps) == 0:
        return timesteps.numpy(), []
    x = scheduler.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), timesteps[:1].repeat(SHAPE[0]))
    samples = [x.numpy()]
    kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed + 1)
    for t in timesteps[:limit]:
        model_input = scheduler.scale_model_input(x, t)
        model_output = torch.from_numpy(fake_unet(model_input.numpy(), float(t)))
        x = scheduler.step(model_output, t, x, return_dict=False, **kwargs)[0]
        samples += [model_input.numpy(), x.numpy()]
    return timesteps.numpy(), samples


def edgesd_run(name, config, steps, strength, seed=0, plan=None):
    latents, noise = inputs(seed)
    plan = plan or from_config(config, name).plan(steps, strength)
    if len(plan.timesteps) == 0:
        return plan.timesteps, []
    x = plan.add_noise(latents, noise)
    samples = [x]
    state, source = plan.initial_state(), TorchNoise(seed + 1)
    for i, t in enumerate(plan.timesteps):
        model_input = plan.scale_model_input(x, i)
        x, state = plan.step(fake_unet(model_input, float(t)), i, x, state, source)
        samples += [model_input, x]
    return plan.timesteps, samples


def assert_same_run(ours, reference, label=""):
    (timesteps, samples), (ref_timesteps, ref_samples) = ours, reference
    assert timesteps.dtype == ref_timesteps.dtype, f"{label}: timestep dtype"
    if timesteps.dtype == np.int64:
        np.testing.assert_array_equal(timesteps, ref_timesteps, err_msg=f"{label}: timesteps")
    else:  # float timesteps derived from sigmas (karras, ...) inherit their last-ulp differences
        atol = TIMESTEP_RTOL * float(np.abs(ref_timesteps).max(initial=0))
        np.testing.assert_allclose(timesteps, ref_timesteps, rtol=TIMESTEP_RTOL, atol=atol,
                                   err_msg=f"{label}: timesteps")
    assert len(samples) == len(ref_samples), f"{label}: number of samples"
    scale = 0.0  # the largest magnitude the run has reached so far (see the module docstring)
    for k, (got, want) in enumerate(zip(samples, ref_samples)):
        assert got.dtype == np.float32 and got.shape == want.shape, f"{label}: sample {k} dtype/shape"
        assert np.isfinite(want).all(), f"{label}: reference sample {k} not finite (bad test config)"
        scale = max(scale, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=f"{label}: sample {k}")


@pytest.mark.parametrize("name,variant", [(name, v) for name, variants in CASES.items() for v in variants])
def test_matches_diffusers_step_by_step(name, variant):
    config = config_for(variant)
    for steps, strength in itertools.product(STEPS, STRENGTHS):
        if (name, variant, steps) in ILL_CONDITIONED:
            continue
        label = f"{name} {variant} steps={steps} strength={strength}"
        assert_same_run(edgesd_run(name, config, steps, strength), diffusers_run(name, config, steps, strength), label)


@pytest.mark.parametrize("name", SUPPORTED)
def test_off_by_one_is_caught(name):
    """The comparison is sharp: starting one solver step early (a classic t_start slip) fails it on
    the timesteps and on the samples, by orders of magnitude more than the tolerance."""
    config = config_for("sd15")
    timesteps, samples = edgesd_run(name, config, 10, 0.5)
    order = getattr(diffusers, name).order
    shifted_timesteps, shifted = diffusers_run(name, config, 10, 0.5, shift=-order, limit=len(timesteps))
    shifted_timesteps = shifted_timesteps[: len(timesteps)]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(timesteps, shifted_timesteps)
    with pytest.raises(AssertionError):
        assert_same_run((shifted_timesteps, samples), (shifted_timesteps, shifted))
    scale = max(float(np.abs(s).max()) for s in shifted)
    assert max(float(np.abs(a - b).max()) for a, b in zip(samples, shifted)) > 1000 * RTOL * scale


@pytest.mark.parametrize("name", SUPPORTED)
def test_plan_is_a_value(name):
    """No hidden counters: one plan replayed twice, and a fresh plan, give identical runs."""
    config = config_for("sd15")
    plan = from_config(config, name).plan(10, 0.75)
    first, again = edgesd_run(name, config, 10, 0.75, plan=plan), edgesd_run(name, config, 10, 0.75, plan=plan)
    for a, b in zip(first[1], again[1]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        plan.timesteps[0] = 0


def test_unknown_class_names_the_supported_ones():
    with pytest.raises(UnsupportedSchedulerError, match="EulerDiscreteScheduler") as info:
        from_config({"_class_name": "KDPM2DiscreteScheduler"})
    assert isinstance(info.value, ValueError) and "KDPM2DiscreteScheduler" in str(info.value)
    with pytest.raises(UnsupportedSchedulerError, match="DDIMScheduler"):
        from_config(SD15, "NoSuchScheduler")


@pytest.mark.parametrize("name,key,value,supported", [
    ("PNDMScheduler", "skip_prk_steps", False, "True"),
    ("EulerAncestralDiscreteScheduler", "prediction_type", "sample", "'v_prediction'"),
    ("EulerDiscreteScheduler", "use_beta_sigmas", True, "False"),
    ("DDIMScheduler", "timestep_spacing", "evenly", "'trailing'"),
    ("DDIMScheduler", "beta_schedule", "sigmoid", "'squaredcos_cap_v2'"),
    ("DDPMScheduler", "variance_type", "learned_range", "'fixed_small'"),
    ("DPMSolverMultistepScheduler", "algorithm_type", "sde-dpmsolver", "'dpmsolver++'"),
    ("DPMSolverMultistepScheduler", "use_flow_sigmas", True, "False"),
    ("DPMSolverMultistepScheduler", "prediction_type", "flow_prediction", "'epsilon'"),
    ("UniPCMultistepScheduler", "use_dynamic_shifting", True, "False"),
    ("LCMScheduler", "prediction_type", "flow_prediction", "'v_prediction'"),
])
def test_unsupported_config_values_say_what_is_supported(name, key, value, supported):
    with pytest.raises(UnsupportedSchedulerError) as info:
        from_config({**SD15, key: value}, name)
    message = str(info.value)
    assert name in message and key in message and repr(value) in message and supported in message


def test_dpmsolver_needs_sigma_min_with_zero_final_sigma():
    with pytest.raises(UnsupportedSchedulerError, match="sigma_min"):
        from_config({**SD15, "algorithm_type": "dpmsolver"}, "DPMSolverMultistepScheduler")


def test_configs_written_for_other_solvers_map_as_in_diffusers():
    """diffusers maps UniPC's solver_type onto DPM-Solver's (and back) instead of failing."""
    for name, solver_type in [("DPMSolverMultistepScheduler", "bh2"), ("UniPCMultistepScheduler", "midpoint")]:
        config = {**SD15, "solver_type": solver_type}
        assert_same_run(edgesd_run(name, config, 10, 0.8), diffusers_run(name, config, 10, 0.8), name)


def test_bad_step_counts_are_input_errors():
    with pytest.raises(InvalidInputError, match="original_inference_steps"):
        from_config(SD15, "LCMScheduler").plan(60)
    with pytest.raises(InvalidInputError, match="1000"):
        from_config(SD15, "DDIMScheduler").plan(1001)
    plan = from_config(SD15, "EulerDiscreteScheduler").plan(4, 0.1)  # int(4 * 0.1) = 0 steps
    assert len(plan.timesteps) == 0
    with pytest.raises(InvalidInputError, match="strength"):
        plan.add_noise(*inputs())


@pytest.mark.parametrize("start,end,steps", [(0.00085**0.5, 0.012**0.5, 1000), (0.0001, 0.02, 1000),
                                             (-6, 6, 1000), (0.3, 0.7, 7), (-2.0, 5.0, 26), (1.0, 1.0, 1)])
def test_torch_linspace_is_bit_exact(start, end, steps):
    expected = torch.linspace(start, end, steps, dtype=torch.float32).numpy()
    np.testing.assert_array_equal(common.torch_linspace(start, end, steps), expected)


def test_alphas_cumprod_bit_exact_for_sd15():
    scheduler = diffusers.DDIMScheduler.from_config(SD15)
    ours = from_config(SD15, "DDIMScheduler").alphas_cumprod
    np.testing.assert_array_equal(ours, scheduler.alphas_cumprod.numpy())


@pytest.mark.parametrize("name", [*schedulers.SAMPLERS, "euler karras", "dpmpp_2m", "k_lms_ka", "Heun Karras",
                                  "EulerDiscreteScheduler Karras", "DPMSolverMultistepScheduler karras"])
def test_sampler_names_are_diffusers_documented_equivalents(name):
    """A1111/ComfyUI sampler names give the diffusers scheduler and options diffusers' docs map them to
    (DPM++ 2M Karras: DPMSolverMultistepScheduler(use_karras_sigmas=True), ...): the same timesteps and sigmas."""
    class_name, overrides = schedulers.sampler(name)
    reference = getattr(diffusers, class_name).from_config(SD15, **overrides)
    reference.set_timesteps(12)
    plan = schedulers.from_config(SD15, name).plan(12, 1.0)
    np.testing.assert_allclose(np.asarray(plan.timesteps, np.float64), reference.timesteps.numpy(), rtol=TIMESTEP_RTOL)
    assert getattr(reference.config, "use_karras_sigmas", False) == ("karras" in name.lower() or name.endswith("_ka"))
    if getattr(reference.config, "use_karras_sigmas", False):
        np.testing.assert_allclose(plan.schedule.sigmas, reference.sigmas.numpy(), rtol=RTOL)


def test_unknown_sampler_names_and_karras_where_it_does_not_apply_are_refused():
    assert schedulers.sampler("Euler a Karras") is None and schedulers.sampler("DDIM Karras") is None
    assert schedulers.sampler("DDIMScheduler Karras") is None and schedulers.sampler("NoScheduler Karras") is None
    with pytest.raises(UnsupportedSchedulerError, match="or a sampler name: Euler a, Euler, LMS"):
        schedulers.from_config(SD15, "DPM++ 3M")
