"""A tiny VAE (diffusers' AutoencoderTiny, as TAESD) exported into a VAE folder and used in place of a
model's VAE, against diffusers' img2img with vae=AutoencoderTiny by seed, in fp32, on both engines
(same bound as test_pipeline_parity); for decoding only, against diffusers' latents decoded by it."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline, ModelFolderError
from edgesd.outputs import read_parameters

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_cli import edgesd  # noqa: E402
from test_pipeline_parity import NEGATIVE, PROMPT, assert_images_close, test_image  # noqa: E402

BACKENDS = ("onnxruntime", "openvino")
CALL = dict(strength=0.75, num_inference_steps=4, guidance_scale=7.5)


def reference(diffusers_folder, vae=None, **call):
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        diffusers_folder, safety_checker=None, requires_safety_checker=False, **({"vae": vae} if vae else {}))
    return pipe, pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=test_image(), num_images_per_prompt=2,
                      generator=torch.Generator("cpu").manual_seed(7), **{**CALL, **call})


def ours(folder, backend, **options):
    pipe = Img2ImgPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32", **options)
    return pipe(test_image(), PROMPT, negative_prompt=NEGATIVE, seed=7, num_images=2, **CALL)


def test_the_export_is_a_vae_folder(tiny_vae):
    manifest = json.loads((tiny_vae["exported"] / "edgesd.json").read_text())
    assert manifest["kind"] == "vae" and manifest["vae_encoder_output"] == "latents"
    assert (manifest["latent_channels"], manifest["vae_scale_factor"], manifest["vae_scaling_factor"]) == (4, 2, 1.0)
    for submodel in ("vae_encoder", "vae_decoder"):
        assert set(manifest["submodels"][submodel]["formats"]) == {"onnx", "openvino"}
        assert max(manifest["submodels"][submodel]["validation_max_abs_deviation"].values()) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_vae_matches_diffusers(exported, diffusers_folders, tiny_vae, backend):
    tiny = diffusers.AutoencoderTiny.from_pretrained(tiny_vae["diffusers"])
    _, expected = reference(diffusers_folders["tiny-sd1"], tiny)
    _, with_its_own = reference(diffusers_folders["tiny-sd1"])
    moved = np.abs(np.asarray(expected.images[0], np.int16) - np.asarray(with_its_own.images[0], np.int16))
    assert moved.mean() > 5  # the VAE matters: a pipeline that kept its own would fail
    result = ours(exported["tiny-sd1"], backend, vae=tiny_vae["exported"])
    assert_images_close(result.images, expected.images)
    assert result.parameters["vae"]["folder"] == "taesd" and result.parameters["vae"]["replaces"] == ["vae_encoder", "vae_decoder"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_only_matches_diffusers_latents_decoded_by_it(exported, diffusers_folders, tiny_vae, backend):
    """The model's VAE encodes (a sampled draw, scaled by 0.18215); the tiny one decodes those latents as they are."""
    tiny = diffusers.AutoencoderTiny.from_pretrained(tiny_vae["diffusers"])
    pipe, latents = reference(diffusers_folders["tiny-sd1"], output_type="latent")
    with torch.no_grad():
        decoded = tiny.decode(latents.images / tiny.config.scaling_factor).sample
    expected = pipe.image_processor.postprocess(decoded, output_type="pil")
    result = ours(exported["tiny-sd1"], backend, vae=tiny_vae["exported"], vae_decode_only=True)
    assert_images_close(result.images, expected)
    assert result.parameters["vae"]["replaces"] == ["vae_decoder"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_inpainting_with_a_tiny_vae_matches_diffusers(exported, diffusers_folders, tiny_vae, backend):
    """Inpainting encodes twice (the image, and for 9-channel UNets the masked image): no draws either time."""
    from test_inpaint_parity import mask_of, picture

    from edgesd import InpaintPipeline

    size = (86, 54)
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        diffusers_folders["tiny-sd1"], vae=diffusers.AutoencoderTiny.from_pretrained(tiny_vae["diffusers"]),
        safety_checker=None, requires_safety_checker=False)
    expected = pipe(prompt=PROMPT, image=picture(*size), mask_image=mask_of(*size), width=size[0], height=size[1],
                    strength=0.75, num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(5)).images
    ours_ = InpaintPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32",
                                 vae=tiny_vae["exported"])
    result = ours_(picture(*size), mask_of(*size), PROMPT, strength=0.75, num_inference_steps=4, guidance_scale=6.0,
                   seed=5, size=size)
    assert_images_close(result.images, expected)


def test_a_vae_that_does_not_fit_is_refused(exported, tiny_vae, tmp_path):
    other = tmp_path / "wide-vae"
    shutil.copytree(tiny_vae["exported"], other)
    manifest = json.loads((other / "edgesd.json").read_text())
    manifest["latent_channels"] = 16
    (other / "edgesd.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="does not fit tiny-sd1: its latents have 16 channels at 1/2"):
        Img2ImgPipeline.load(exported["tiny-sd1"], vae=other)
    with pytest.raises(ModelFolderError, match="is a whole model, not a VAE folder"):
        Img2ImgPipeline.load(exported["tiny-sd1"], vae=exported["tiny-sd2"])
    with pytest.raises(ModelFolderError, match="is a VAE folder, not a whole model"):
        Img2ImgPipeline.load(tiny_vae["exported"])


def test_cli_vae_is_recorded_and_replay_says_when_it_differs(exported, tiny_vae, tmp_path):
    source = tmp_path / "in.png"
    test_image().save(source)
    out = tmp_path / "out.png"
    done = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--steps", "2", "--seed", "3",
                  "--vae", tiny_vae["exported"], "-o", out)
    assert done.returncode == 0, done.stderr
    assert read_parameters(out)["vae"]["folder"] == "taesd"
    again = edgesd("img2img", exported["tiny-sd1"], "-i", source, "--replay", out, "-o", tmp_path / "again.png")
    assert again.returncode == 0 and "VAE (taesd for encoder+decoder -> the model's; not found with the same sha256 " \
                                     "here, beside the image or beside the model folder: give it with --vae)" in again.stderr
    shutil.copytree(tiny_vae["exported"], tmp_path / "taesd")  # beside the image: found by its name and manifest
    found = edgesd("img2img", exported["tiny-sd1"], "-i", source, "--replay", out, "-o", tmp_path / "found.png")
    assert found.returncode == 0 and f"replay: using {tmp_path / 'taesd'}" in found.stderr and "VAE (" not in found.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "found.png")))
    alone = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--vae-decode-only")
    assert alone.returncode == 2 and "--vae-decode-only needs --vae FOLDER" in alone.stderr
    wrong = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--vae", exported["tiny-sd2"])
    assert wrong.returncode == 2 and "not a VAE folder" in wrong.stderr


def test_a_tiny_vae_exports_in_fp32_only(tmp_path):
    from edgesd.errors import EdgesdError
    from edgesd.export import export_model

    with pytest.raises(EdgesdError, match="fp32 only"):
        export_model("random:tiny-taesd", tmp_path / "q", precision="fp16")
    assert not (tmp_path / "q").exists()


def test_info_describes_a_vae_folder(tiny_vae):
    done = edgesd("info", tiny_vae["exported"], "--verify")
    assert done.returncode == 0, done.stderr
    assert "a VAE folder: give it as --vae" in done.stdout and "vae_decoder   openvino" in done.stdout
    assert "verified" in done.stdout


def test_the_memory_check_sizes_the_vae_in_use(exported, tiny_vae):
    """A tiny VAE has no attention and fewer full-resolution channels: large inputs need less."""
    from edgesd import memory
    from edgesd.model_folder import open_model_folder, open_vae_folder

    folder, vae = open_model_folder(exported["tiny-sd1"]), open_vae_folder(tiny_vae["exported"])
    # a UNet whose attention is not fused (optimum's export) has score matrices of its own to count
    folder = dataclasses.replace(folder, manifest={**folder.manifest, "onnx_attention_fused": False})
    own = memory._terms(folder, 512, 512, 1, False, "onnxruntime", False)
    tiny = memory._terms(folder, 512, 512, 1, False, "onnxruntime", False, vae)
    assert own[1] > 0 and tiny[1] == 0  # the VAE's attention scores
    assert tiny[2] == own[2] // 2  # 16 full-resolution channels instead of 32
    assert tiny[0] == own[0] > 0  # the UNet's are the UNet's
