"""Img2ImgPipeline against diffusers' StableDiffusionImg2ImgPipeline, by seed, on random test models.

Tolerance on the uint8 output images: at most 2 levels anywhere, and at least 99% of values
within 1 level. fp32 exports match torch to ~1e-6 (see the manifests' validation figures); the
few-step loops here amplify that to well under one level, while each deliberate break at the end
(off-by-one start timestep, a wrong VAE scaling factor, swapped guidance halves) moves images by
far more, and those tests show the comparison fails for them.
"""

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline
from edgesd.schedulers import sampler

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SCHEDULERS = [
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler", "LCMScheduler",
]
STRENGTHS = [0.3, 0.75, 1.0]
STEPS = 4
PROMPT, NEGATIVE = "a red house by a lake", "blurry, grey"


def test_image() -> Image.Image:
    """85x53: not square, sides not multiples of 8 (nor of tiny-sd1's VAE factor 2): floored as diffusers does."""
    y, x = np.mgrid[0:53, 0:85]
    rgb = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 7) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


test_image.__test__ = False


def assert_images_close(ours: list[Image.Image], reference: list[Image.Image]) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.size == b.size
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.max() <= 2, f"max difference {diff.max()} levels"
        assert (diff <= 1).mean() >= 0.99, f"only {(diff <= 1).mean():.2%} of values within 1 level"


@pytest.fixture(scope="module")
def reference_pipes(diffusers_folders):
    return {
        name: diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        for name, folder in diffusers_folders.items()
    }


_cache = {}


def reference(pipes, model, scheduler, strength, guidance, steps=STEPS, seed=7, num_images=2):
    key = (model, scheduler, strength, guidance, steps, seed, num_images)
    if key not in _cache:
        pipe, before = pipes[model], pipes[model].scheduler
        class_name, overrides = sampler(scheduler) or (scheduler, {})  # an A1111 name: diffusers' documented equivalent
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
        try:
            _cache[key] = pipe(
                prompt=PROMPT, negative_prompt=NEGATIVE if guidance > 1 else None, image=test_image(), strength=strength,
                num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=num_images,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images
        finally:  # overrides (Karras sigmas) stay in a scheduler's config: the next test must not inherit them
            pipe.scheduler = before
    return _cache[key]


@pytest.fixture(scope="module")
def pipes(exported):
    return {
        (model, backend): Img2ImgPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32")
        for model, folder in exported.items()
        for backend in ("onnxruntime", "openvino")
    }


def ours(pipe, scheduler, strength, guidance, steps=STEPS, seed=7, num_images=2):
    return pipe(test_image(), PROMPT, negative_prompt=NEGATIVE if guidance > 1 else None, strength=strength,
                num_inference_steps=steps, guidance_scale=guidance, seed=seed, num_images=num_images,
                scheduler=scheduler).images


CASES = [
    (model, backend, scheduler, STRENGTHS[i % 3], [0.0, 6.0][(i // 3 + j) % 2])
    for j, (model, backend) in enumerate([(m, b) for m in ("tiny-sd1", "tiny-sd2") for b in ("onnxruntime", "openvino")])
    for i, scheduler in enumerate(SCHEDULERS)
    if (model, scheduler) != ("tiny-sd2", "PNDMScheduler")  # PRK steps unsupported: see the test below
]


@pytest.mark.parametrize("model,backend,scheduler,strength,guidance", CASES)
def test_matches_diffusers(pipes, reference_pipes, model, backend, scheduler, strength, guidance):
    assert_images_close(
        ours(pipes[model, backend], scheduler, strength, guidance),
        reference(reference_pipes, model, scheduler, strength, guidance),
    )


@pytest.mark.parametrize("strength", [0.1, 0.3, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd2"])
def test_every_strength_with_the_models_scheduler(pipes, reference_pipes, exported, model, strength):
    from edgesd.model_folder import open_model_folder

    scheduler = open_model_folder(exported[model]).scheduler_config["_class_name"]
    assert_images_close(
        ours(pipes[model, "onnxruntime"], scheduler, strength, 6.0, steps=10, num_images=1),
        reference(reference_pipes, model, scheduler, strength, 6.0, steps=10, num_images=1),
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "Euler a", "DPM++ 2M SDE Karras"])
def test_a1111_sampler_names_match_diffusers_documented_equivalents(pipes, reference_pipes, backend, name):
    assert_images_close(ours(pipes["tiny-sd1", backend], name, 0.75, 6.0), reference(reference_pipes, "tiny-sd1", name, 0.75, 6.0))


def test_pndm_with_prk_steps_is_refused_clearly(pipes):
    """tiny-sd2's config has no skip_prk_steps, so PNDM would need Runge-Kutta warm-up steps."""
    from edgesd.errors import UnsupportedSchedulerError

    with pytest.raises(UnsupportedSchedulerError, match="skip_prk_steps=False is not supported"):
        ours(pipes["tiny-sd2", "onnxruntime"], "PNDMScheduler", 0.5, 0.0)


def image_of_size(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.tile(np.asarray(test_image()), (3, 3, 1))[:height, :width])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model,width,height", [("tiny-sd1", 86, 54), ("tiny-sd2", 88, 136)])
def test_sides_that_are_multiples_of_the_vae_factor_only(pipes, reference_pipes, model, backend, width, height):
    """Latent sides odd (43x27, 11x17): the UNet must follow the skip connections' sizes, as diffusers'
    does, instead of flooring further (what a fixed-2x export needs)."""
    image = image_of_size(width, height)
    pipe = reference_pipes[model]
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=0.75, num_inference_steps=STEPS,
                    guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(5)).images
    got = pipes[model, backend](image, PROMPT, negative_prompt=NEGATIVE, strength=0.75, num_inference_steps=STEPS,
                                guidance_scale=6.0, seed=5, scheduler="EulerDiscreteScheduler").images
    assert got[0].size == (width, height)
    assert_images_close(got, expected)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_folders_with_fixed_upsampling_floor_further_and_say_so_once(optimum_exported, fmt, caplog):
    """optimum traces the UNet at its native size (fixed 2x upsampling): tiny-sd1 then needs
    multiples of 4 px; 86x54 -> 84x52, said once per pipeline."""
    pipe = Img2ImgPipeline.load(optimum_exported[fmt], device="cpu", inference_precision="fp32")
    with caplog.at_level("WARNING", logger="edgesd"):
        sizes = [pipe(image_of_size(86, 54), PROMPT, seed=0, num_inference_steps=2, strength=0.5).images[0].size
                 for _ in range(2)]
    assert sizes == [(84, 52)] * 2
    assert caplog.text.count("floored to 84x52") == 1 and "re-export it with `edgesd export`" in caplog.text


def test_the_cli_sizes_a_call_before_loading_as_the_pipeline_runs_it(optimum_exported):
    """The CLI checks memory before loading at the size the call will run at, with the functions the
    pipelines use: floored where the UNet upsamples by a fixed 2x, the outpaint canvas rounded up."""
    from edgesd import InpaintPipeline
    from edgesd.pipelines import outpaint_canvas, processing_size

    pipe = InpaintPipeline.load(optimum_exported["onnx"], device="cpu", inference_precision="fp32")
    ran = Img2ImgPipeline.load(optimum_exported["onnx"], device="cpu", inference_precision="fp32")(
        image_of_size(86, 54), PROMPT, seed=0, num_inference_steps=2, strength=0.5).images[0].size
    assert processing_size(pipe.folder, (86, 54)) == ((86, 54), ran) and ran == (84, 52)
    canvas = pipe.outpaint(image_of_size(64, 48), PROMPT, right=10, seed=0, num_inference_steps=2).images[0].size
    assert outpaint_canvas(pipe.folder, (64, 48), right=10) == ((64, 48), canvas) and canvas == (76, 48)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_low_memory_tiles_the_vae_as_diffusers_enable_vae_tiling(exported, pipes, reference_pipes, backend):
    """172x100 is larger than tiny-sd1's 64 px VAE: 3x4 encoder tiles with partial edge tiles."""
    image = Image.fromarray(np.tile(np.asarray(test_image()), (2, 3, 1))[:100, :172])
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32", low_memory=True)
    reference_pipe = reference_pipes["tiny-sd1"]
    reference_pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(reference_pipe.scheduler.config)
    reference_pipe.vae.enable_tiling()
    try:
        expected = reference_pipe(prompt=PROMPT, image=image, strength=0.5, num_inference_steps=4, guidance_scale=0,
                                  generator=torch.Generator("cpu").manual_seed(3)).images
    finally:
        reference_pipe.vae.disable_tiling()
    settings = dict(strength=0.5, num_inference_steps=4, guidance_scale=0, seed=3, scheduler="EulerDiscreteScheduler")
    assert_images_close(pipe(image, PROMPT, **settings).images, expected)
    with pytest.raises(AssertionError):  # tiling really changes the result: the test above is not vacuous
        assert_images_close(pipes["tiny-sd1", backend](image, PROMPT, **settings).images, expected)


# Each deliberate break must be caught by assert_images_close.

def test_catches_an_off_by_one_start_timestep(pipes, reference_pipes):
    # steps 10: strength 0.5 runs 5 steps from timesteps[5]; 0.6 is what an off-by-one would run.
    broken = ours(pipes["tiny-sd1", "onnxruntime"], "DDIMScheduler", 0.6, 6.0, steps=10, num_images=1)
    with pytest.raises(AssertionError):
        assert_images_close(broken, reference(reference_pipes, "tiny-sd1", "DDIMScheduler", 0.5, 6.0, steps=10, num_images=1))


def test_catches_a_wrong_vae_scaling_factor(pipes, reference_pipes, monkeypatch):
    pipe = pipes["tiny-sd1", "onnxruntime"]
    monkeypatch.setattr(pipe.vae, "scaling_factor", 0.2)  # the model's is 0.18215
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipe, "EulerDiscreteScheduler", 0.75, 6.0),
                            reference(reference_pipes, "tiny-sd1", "EulerDiscreteScheduler", 0.75, 6.0))


def test_catches_swapped_guidance_halves(pipes, reference_pipes, monkeypatch):
    pipe = pipes["tiny-sd1", "onnxruntime"]
    encode = pipe.encode_prompt

    def swapped(*args):
        return {name: np.concatenate(np.split(value, 2)[::-1]) for name, value in encode(*args).items()}

    monkeypatch.setattr(pipe, "encode_prompt", swapped)
    pipe.reuse_encodings = False
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipe, "EulerDiscreteScheduler", 0.75, 6.0),
                            reference(reference_pipes, "tiny-sd1", "EulerDiscreteScheduler", 0.75, 6.0))


def test_strength_zero_returns_the_input_round_tripped(pipes, reference_pipes):
    """diffusers refuses strength 0; edgesd returns the VAE round trip of the input (no noise, no steps)."""
    pipe = reference_pipes["tiny-sd2"]
    pixels = pipe.image_processor.preprocess(test_image())
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.sample(torch.Generator("cpu").manual_seed(7))
        expected = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")
    assert_images_close(ours(pipes["tiny-sd2", "onnxruntime"], None, 0.0, 0.0, num_images=1), expected)
