"""InpaintPipeline against diffusers' StableDiffusionInpaintPipeline, by seed, on random test models:
a 4-channel UNet (tiny-sd1, tiny-sd2: known region re-noised and blended after each step) and a
9-channel inpainting UNet (tiny-sd1-inpaint: mask and masked-image latents beside the latents).
Same tolerance as the img2img parity tests (tests/test_pipeline_parity.py); an inverted mask and a
wrong draw order must fail it."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgesd import InpaintPipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_pipeline_parity import assert_images_close  # noqa: E402

PROMPT, NEGATIVE = "a red house by a lake", "blurry, grey"
SIZES = {"tiny-sd1": (86, 54), "tiny-sd2": (88, 56), "tiny-sd1-inpaint": (86, 54)}  # multiples of the VAE factor, not square


def picture(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 7) % 256], axis=-1).astype(np.uint8))


def mask_of(width: int, height: int) -> Image.Image:
    """A white rectangle to repaint, and a grey (140) band on the left that binarises to repaint too."""
    m = np.zeros((height, width), np.uint8)
    m[height // 4 : 3 * height // 4, width // 3 : width - 4] = 255
    m[:, :6] = 140
    return Image.fromarray(m)


@pytest.fixture(scope="module")
def folders(diffusers_folders, exported, inpainting_model) -> dict:
    """model -> (diffusers folder, edgesd folder)."""
    return {"tiny-sd1": (diffusers_folders["tiny-sd1"], exported["tiny-sd1"]),
            "tiny-sd2": (diffusers_folders["tiny-sd2"], exported["tiny-sd2"]),
            "tiny-sd1-inpaint": inpainting_model}


@pytest.fixture(scope="module")
def reference_pipes(folders):
    return {name: diffusers.StableDiffusionInpaintPipeline.from_pretrained(src, safety_checker=None,
                                                                          requires_safety_checker=False)
            for name, (src, _) in folders.items()}


@pytest.fixture(scope="module")
def pipes(folders):
    return {(name, backend): InpaintPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32")
            for name, (_, folder) in folders.items() for backend in ("onnxruntime", "openvino")}


def reference(pipe, scheduler, strength, guidance, mask=None, seed=7, num_images=2, size=None):
    width, height = size
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE if guidance > 1 else None, image=picture(width, height),
                mask_image=mask or mask_of(width, height), height=height, width=width, strength=strength,
                num_inference_steps=4, guidance_scale=guidance, num_images_per_prompt=num_images,
                generator=torch.Generator("cpu").manual_seed(seed)).images


def ours(pipe, scheduler, strength, guidance, mask=None, seed=7, num_images=2, size=None):
    width, height = size
    return pipe(picture(width, height), mask or mask_of(width, height), PROMPT,
                negative_prompt=NEGATIVE if guidance > 1 else None, strength=strength, num_inference_steps=4,
                guidance_scale=guidance, seed=seed, num_images=num_images, scheduler=scheduler, size=size).images


CASES = [
    ("tiny-sd1", "PNDMScheduler", 1.0, 0.0), ("tiny-sd1", "EulerAncestralDiscreteScheduler", 0.75, 6.0),
    ("tiny-sd2", "EulerDiscreteScheduler", 1.0, 6.0), ("tiny-sd2", "DPMSolverMultistepScheduler", 0.75, 0.0),
    ("tiny-sd1-inpaint", "PNDMScheduler", 1.0, 6.0), ("tiny-sd1-inpaint", "EulerDiscreteScheduler", 0.75, 0.0),
    ("tiny-sd1-inpaint", "DDPMScheduler", 1.0, 0.0),
]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model,scheduler,strength,guidance", CASES)
def test_matches_diffusers(pipes, reference_pipes, model, scheduler, strength, guidance, backend):
    size = SIZES[model]
    got = ours(pipes[model, backend], scheduler, strength, guidance, size=size)
    assert got[0].size == size
    assert_images_close(got, reference(reference_pipes[model], scheduler, strength, guidance, size=size))


def test_without_a_size_it_works_at_the_native_square_as_diffusers(pipes, reference_pipes):
    """tiny-sd1's native size is 64x64 (UNet sample 32 x VAE factor 2): the 86x54 input is stretched to it."""
    width, height = SIZES["tiny-sd1"]
    pipe = reference_pipes["tiny-sd1"]
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe(prompt=PROMPT, image=picture(width, height), mask_image=mask_of(width, height), num_inference_steps=4,
                    guidance_scale=0, generator=torch.Generator("cpu").manual_seed(1)).images
    got = pipes["tiny-sd1", "openvino"](picture(width, height), mask_of(width, height), PROMPT, num_inference_steps=4,
                                        guidance_scale=0, seed=1, scheduler="EulerDiscreteScheduler").images
    assert got[0].size == expected[0].size == (64, 64)
    assert_images_close(got, expected)


def test_leading_spacing_starts_from_the_scaled_top_sigma(folders, tmp_path):
    """Euler with 'leading' spacing starts pure noise at sqrt(sigma_max^2 + 1), not sigma_max."""
    src, folder = folders["tiny-sd1"]
    for root, name in ((src, "diffusers"), (folder, "edgesd")):
        copy = tmp_path / name
        shutil.copytree(root, copy)
        config = copy / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "EulerDiscreteScheduler",
                                      "timestep_spacing": "leading"}))
    reference_pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "diffusers", safety_checker=None,
                                                                             requires_safety_checker=False)
    pipe = InpaintPipeline.load(tmp_path / "edgesd", backend="onnxruntime", device="cpu", inference_precision="fp32")
    size = SIZES["tiny-sd1"]
    assert_images_close(ours(pipe, None, 1.0, 0.0, size=size), reference(reference_pipe, "EulerDiscreteScheduler", 1.0, 0.0, size=size))


def test_white_repaints_and_black_keeps(pipes):
    """4-channel UNet: after the last step the kept region's latents are the input's, whatever the
    prompt; the repainted region follows the prompt."""
    pipe, size = pipes["tiny-sd2", "onnxruntime"], SIZES["tiny-sd2"]
    finals = []
    for prompt in ("a red house", "a green field"):
        pipe(picture(*size), mask_of(*size), prompt, strength=1.0, num_inference_steps=4, guidance_scale=0, seed=3, size=size,
             scheduler="EulerDiscreteScheduler", callback=lambda step, total, latents: finals.append(latents.copy()))
    repaint = np.asarray(mask_of(*size))[::8, ::8] >= 128  # the mask at latent resolution (VAE factor 8)
    first, second = finals[3], finals[7]
    assert np.array_equal(first[..., ~repaint], second[..., ~repaint])
    assert not np.allclose(first[..., repaint], second[..., repaint])


def test_catches_an_inverted_mask(pipes, reference_pipes):
    size = SIZES["tiny-sd1-inpaint"]
    inverted = Image.fromarray(255 - np.asarray(mask_of(*size)))
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipes["tiny-sd1-inpaint", "onnxruntime"], "EulerDiscreteScheduler", 1.0, 0.0, mask=inverted, size=size),
                            reference(reference_pipes["tiny-sd1-inpaint"], "EulerDiscreteScheduler", 1.0, 0.0, size=size))


def test_catches_a_wrong_draw_order(pipes, reference_pipes, monkeypatch):
    """The masked image's encoding draws from the generator although a 4-channel UNet ignores it;
    skipping that draw shifts every later ancestral step's noise."""
    pipe = pipes["tiny-sd1", "onnxruntime"]
    encode = InpaintPipeline.encode_image
    calls = []

    def masked_draws_nothing(self, pixels, generator):  # every second encoding is the masked image's
        calls.append(pixels)
        return encode(self, pixels, generator if len(calls) % 2 else _NoDraw())

    monkeypatch.setattr(InpaintPipeline, "encode_image", masked_draws_nothing)
    size = SIZES["tiny-sd1"]
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipe, "EulerAncestralDiscreteScheduler", 1.0, 0.0, size=size),
                            reference(reference_pipes["tiny-sd1"], "EulerAncestralDiscreteScheduler", 1.0, 0.0, size=size))


class _NoDraw:
    def randn(self, shape):
        return np.zeros(shape, np.float32)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_optimum_inpainting_folders_load_as_they_are(folders, reference_pipes, tmp_path, fmt):
    """`optimum-cli export onnx|openvino --task inpainting` of the 9-channel model, at a size its
    fixed-2x UNet takes (multiples of 4 px for tiny-sd1)."""
    src = str(folders["tiny-sd1-inpaint"][0])
    if fmt == "onnx":
        from optimum.exporters.onnx import main_export

        main_export(src, tmp_path / "optimum", task="inpainting", do_validation=False)
    else:
        from optimum.exporters.openvino import main_export

        main_export(src, tmp_path / "optimum", task="inpainting")
    pipe = InpaintPipeline.load(tmp_path / "optimum", device="cpu", inference_precision="fp32")
    size = (84, 52)
    assert_images_close(ours(pipe, "EulerDiscreteScheduler", 1.0, 6.0, size=size),
                        reference(reference_pipes["tiny-sd1-inpaint"], "EulerDiscreteScheduler", 1.0, 6.0, size=size))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd1-inpaint"])
def test_padding_mask_crop_matches_diffusers(pipes, reference_pipes, model, backend):
    """A small mask: only its padded box, widened to the image's aspect ratio, is inpainted at full
    size and pasted back over the original."""
    width, height = SIZES[model]
    m = np.zeros((height, width), np.uint8)
    m[20:34, 50:70] = 255
    mask = Image.fromarray(m)
    pipe = reference_pipes[model]
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe(prompt=PROMPT, image=picture(width, height), mask_image=mask, height=height, width=width,
                    strength=1.0, num_inference_steps=4, guidance_scale=6.0, padding_mask_crop=4,
                    generator=torch.Generator("cpu").manual_seed(5)).images
    got = pipes[model, backend](picture(width, height), mask, PROMPT, strength=1.0, num_inference_steps=4, guidance_scale=6.0,
                                seed=5, scheduler="EulerDiscreteScheduler", padding_mask_crop=4, size=(width, height)).images
    assert_images_close(got, expected)
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(got[0])[outside], np.asarray(picture(width, height))[outside])  # pasted back


def test_catches_an_unblended_last_step(pipes, reference_pipes, monkeypatch):
    """4-channel UNet: the known region must be put back after the last step too (unnoised)."""
    from edgesd.pipelines import base

    denoise = base.denoise

    def skip_last_blend(plan, predict, latents, generator, callback=None, on_step=None):
        last = len(plan.timesteps) - 1
        return denoise(plan, predict, latents, generator, callback, lambda i, z: z if i == last else on_step(i, z))

    monkeypatch.setattr(base, "denoise", skip_last_blend)
    size = SIZES["tiny-sd2"]
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipes["tiny-sd2", "onnxruntime"], "EulerDiscreteScheduler", 1.0, 0.0, size=size),
                            reference(reference_pipes["tiny-sd2"], "EulerDiscreteScheduler", 1.0, 0.0, size=size))


def test_img2img_on_an_inpainting_model_is_refused_before_loading(inpainting_model, tmp_path):
    """One line naming what to use, before the weights are read: its damaged UNet is never reached."""
    from test_cli import edgesd

    folder = tmp_path / "inpaint"
    shutil.copytree(inpainting_model[1], folder)
    unet = folder / "unet" / "model.onnx"
    unet.write_bytes(b"\0" * unet.stat().st_size)
    picture(*SIZES["tiny-sd1-inpaint"]).save(tmp_path / "in.png")
    done = edgesd("img2img", folder, "-i", tmp_path / "in.png", "-p", "x", "--backend", "onnxruntime", "-o", tmp_path / "o.png")
    assert done.returncode == 2 and done.stderr.startswith("error: inpaint is an inpainting model (9-channel UNet): use "
                                                           "InpaintPipeline (edgesd inpaint / outpaint)")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "o.png").exists()
    from edgesd import Img2ImgPipeline  # as edgesd serve loads every model, then inpaints with from_pipe

    pipe = Img2ImgPipeline.load(inpainting_model[1], backend="onnxruntime")
    image, mask = picture(*SIZES["tiny-sd1-inpaint"]), mask_of(*SIZES["tiny-sd1-inpaint"])
    made = InpaintPipeline.from_pipe(pipe)(image, mask, "x", num_inference_steps=2, seed=1, size=image.size)
    assert made.images[0].size == image.size
