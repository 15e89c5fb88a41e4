"""ControlNets against diffusers' StableDiffusionControlNetImg2ImgPipeline and
StableDiffusionControlNetInpaintPipeline, by seed, on both engines: one and two ControlNets (one
reading BGR), guess mode, guidance start/end, guidance off, the default scale, SD 1.x and SD 2.x
(v-prediction) bases, inpainting. The test ControlNets have random output convolutions (diffusers
zeroes them), and a test shows each one moves the image, so a miswired residual cannot pass."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline, InpaintPipeline
from edgesd.errors import InvalidInputError, ModelFolderError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_inpaint_parity import mask_of, picture  # noqa: E402
from test_pipeline_parity import assert_images_close  # noqa: E402

PROMPT, NEGATIVE = "a red house by a lake", "blurry, grey"
SIZE = {"tiny-sd1": (86, 54), "tiny-sd2": (88, 56)}  # multiples of the VAE factor, not square
NETS = {"tiny-sd1": ("tiny-controlnet-sd1", "tiny-controlnet-sd1-bgr"), "tiny-sd2": ("tiny-controlnet-sd2",)}


def control_picture(width: int = 60, height: int = 40) -> Image.Image:
    """Another size than the input (resized to the output's), edges in one channel, a gradient in another."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([((x // 6 + y // 6) % 2) * 255, (x * 4) % 256, np.full_like(x, 30)], -1).astype(np.uint8))


def flipped() -> Image.Image:
    return control_picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def reference(diffusers_folders, controlnets, model, nets, task="img2img", **call):
    pipeline = {"img2img": diffusers.StableDiffusionControlNetImg2ImgPipeline,
                "inpaint": diffusers.StableDiffusionControlNetInpaintPipeline}[task]
    modules = [diffusers.ControlNetModel.from_pretrained(controlnets[n][0]) for n in nets]
    pipe = pipeline.from_pretrained(diffusers_folders[model], controlnet=modules if len(modules) > 1 else modules[0],
                                    safety_checker=None, requires_safety_checker=False)
    if "scheduler" in call:
        pipe.scheduler = getattr(diffusers, call.pop("scheduler")).from_config(pipe.scheduler.config)
    width, height = SIZE[model]
    seed, guidance = call.pop("seed", 7), call.get("guidance_scale", 7.5)
    extra = {"mask_image": mask_of(width, height)} if task == "inpaint" else {}
    images = call.pop("control_image")
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE if guidance > 1 else None, image=picture(width, height), **extra,
                control_image=images if len(nets) > 1 else images[0], height=height, width=width, num_inference_steps=4,
                num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(seed), **call).images


def ours(pipe, model, task="img2img", **call):
    width, height = SIZE[model]
    guidance = call.get("guidance_scale", 7.5)
    extra = (mask_of(width, height),) if task == "inpaint" else ()
    return pipe(picture(width, height), *extra, PROMPT, negative_prompt=NEGATIVE if guidance > 1 else None,
                num_inference_steps=4, seed=call.pop("seed", 7), num_images=2, size=(width, height), **call).images


def load(exported, controlnets, model, nets, backend, task="img2img"):
    cls = {"img2img": Img2ImgPipeline, "inpaint": InpaintPipeline}[task]
    return cls.load(exported[model], backend=backend, device="cpu", inference_precision="fp32",
                    controlnet=[controlnets[n][1] for n in nets])


CASES = {  # name -> (model, ControlNets, call options)
    "one": ("tiny-sd1", NETS["tiny-sd1"][:1], dict(strength=0.75, guidance_scale=7.5, controlnet_conditioning_scale=1.0)),
    "default-scale": ("tiny-sd1", NETS["tiny-sd1"][:1], dict(strength=0.75, guidance_scale=7.5)),
    "guess-mode": ("tiny-sd1", NETS["tiny-sd1"][:1], dict(strength=0.75, guidance_scale=7.5, guess_mode=True)),
    "start-end": ("tiny-sd1", NETS["tiny-sd1"][:1], dict(strength=1.0, guidance_scale=7.5, control_guidance_start=0.25,
                                                          control_guidance_end=0.75, scheduler="EulerAncestralDiscreteScheduler")),
    "no-guidance": ("tiny-sd1", NETS["tiny-sd1"][:1], dict(strength=0.75, guidance_scale=1.0)),
    "two": ("tiny-sd1", NETS["tiny-sd1"], dict(strength=0.75, guidance_scale=7.5, controlnet_conditioning_scale=[0.6, 1.3],
                                               control_guidance_end=[1.0, 0.5])),
    "sd2-v-prediction": ("tiny-sd2", NETS["tiny-sd2"], dict(strength=0.75, guidance_scale=7.5)),
}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", CASES)
def test_img2img_with_controlnets_matches_diffusers(case, backend, diffusers_folders, exported, controlnets):
    model, nets, call = CASES[case]
    images = [control_picture(), flipped()][: len(nets)]
    pipe = load(exported, controlnets, model, nets, backend)
    got = ours(pipe, model, control_image=images, **call)
    assert_images_close(got, reference(diffusers_folders, controlnets, model, nets, control_image=images, **call))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_inpainting_with_a_controlnet_matches_diffusers(backend, diffusers_folders, exported, controlnets, monkeypatch):
    monkeypatch.setitem(SIZE, "tiny-sd1", (96, 64))  # diffusers' ControlNet inpainting takes multiples of 8 only
    nets, call = NETS["tiny-sd1"][:1], dict(guidance_scale=7.5, strength=1.0)  # diffusers' scale 0.5
    pipe = load(exported, controlnets, "tiny-sd1", nets, backend, task="inpaint")
    got = ours(pipe, "tiny-sd1", task="inpaint", control_image=[control_picture()], **call)
    assert_images_close(got, reference(diffusers_folders, controlnets, "tiny-sd1", nets, task="inpaint",
                                       control_image=[control_picture()], **call))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("guidance,guess_mode", [(5.0, False), (5.0, True), (0.0, False)])
def test_sdxl_img2img_with_a_controlnet_matches_diffusers(backend, guidance, guess_mode, sdxl, controlnets):
    """SDXL: the ControlNet takes the pooled text embeddings and time ids too (their conditional half in guess mode)."""
    width, height = 96, 64
    module = diffusers.ControlNetModel.from_pretrained(controlnets["tiny-controlnet-sdxl"][0])
    reference_pipe = diffusers.StableDiffusionXLControlNetImg2ImgPipeline.from_pretrained(sdxl["tiny-sdxl"]["diffusers"],
                                                                                         controlnet=module)
    call = dict(strength=0.7, guidance_scale=guidance, controlnet_conditioning_scale=0.9, guess_mode=guess_mode)
    want = reference_pipe(prompt=PROMPT, image=picture(width, height), control_image=control_picture(), height=height,
                          width=width, num_inference_steps=4, num_images_per_prompt=2,
                          generator=torch.Generator("cpu").manual_seed(5), **call).images
    pipe = Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], backend=backend, device="cpu", inference_precision="fp32",
                                controlnet=controlnets["tiny-controlnet-sdxl"][1])
    got = pipe(picture(width, height), PROMPT, control_image=control_picture(), num_inference_steps=4, num_images=2, seed=5,
               **call).images
    assert_images_close(got, want)


def test_each_controlnet_moves_the_image_and_scale_zero_is_no_controlnet(exported, controlnets):
    """A ControlNet at scale 0 gives exactly the model's own image (the UNet's zero residuals change
    nothing); each test ControlNet at scale 1 changes it far beyond the parity tolerance."""
    call = dict(strength=0.75, guidance_scale=7.5, num_inference_steps=4, seed=3, size=SIZE["tiny-sd1"])
    plain = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", device="cpu", inference_precision="fp32")
    alone = np.asarray(plain(picture(*SIZE["tiny-sd1"]), PROMPT, **call).images[0], np.int16)
    for net in NETS["tiny-sd1"]:
        pipe = load(exported, controlnets, "tiny-sd1", [net], "onnxruntime")
        off, on = (np.asarray(pipe(picture(*SIZE["tiny-sd1"]), PROMPT, control_image=control_picture(),
                                   controlnet_conditioning_scale=scale, **call).images[0], np.int16) for scale in (0.0, 1.0))
        assert np.array_equal(off, alone)
        assert np.abs(on - alone).mean() > 5, f"{net} barely moves the image"


def test_a_controlnet_that_does_not_fit_is_refused_before_loading(exported, controlnets, tmp_path, monkeypatch):
    from edgesd import sessions

    monkeypatch.setattr(sessions, "open_session", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(ModelFolderError, match="is for sd2 models, tiny-sd1 is an sd1 model"):
        Img2ImgPipeline.load(exported["tiny-sd1"], controlnet=controlnets["tiny-controlnet-sd2"][1])
    old = tmp_path / "tiny-sd1"
    shutil.copytree(exported["tiny-sd1"], old)
    manifest = json.loads((old / "edgesd.json").read_text())
    del manifest["unet_controlnet_inputs"]
    (old / "edgesd.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="takes no ControlNet residuals .* re-export it: edgesd export random:tiny-sd1"):
        Img2ImgPipeline.load(old, controlnet=controlnets["tiny-controlnet-sd1"][1])
    with pytest.raises(ModelFolderError, match="is a ControlNet folder, not a whole model"):
        Img2ImgPipeline.load(controlnets["tiny-controlnet-sd1"][1])
    with pytest.raises(ModelFolderError, match="is a whole model, not a ControlNet folder"):
        Img2ImgPipeline.load(exported["tiny-sd1"], controlnet=exported["tiny-sd2"])


def test_control_images_and_options_are_checked_before_anything_runs(exported, controlnets):
    pipe = load(exported, controlnets, "tiny-sd1", NETS["tiny-sd1"], "onnxruntime")
    image = picture(*SIZE["tiny-sd1"])
    with pytest.raises(InvalidInputError, match="1 control image for 2 ControlNet"):
        pipe(image, PROMPT, control_image=control_picture())
    with pytest.raises(InvalidInputError, match="controlnet_conditioning_scale has 3 values for 2 ControlNet"):
        pipe(image, PROMPT, control_image=[control_picture()] * 2, controlnet_conditioning_scale=[1, 1, 1])
    with pytest.raises(InvalidInputError, match="control_guidance_start 0.6 must be below control_guidance_end 0.5"):
        pipe(image, PROMPT, control_image=[control_picture()] * 2, control_guidance_start=0.6, control_guidance_end=0.5)
    with pytest.raises(InvalidInputError, match="controlnet_conditioning_scale"):
        pipe(image, PROMPT, control_image=[control_picture()] * 2, controlnet_conditioning_scale=float("nan"))
    plain = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", device="cpu")
    with pytest.raises(InvalidInputError, match="guess_mode: for ControlNets; load one"):
        plain(image, PROMPT, guess_mode=True)
    with pytest.raises(InvalidInputError, match="1 control image for 0 ControlNet"):
        plain(image, PROMPT, control_image=control_picture())


def test_outputs_record_the_controlnets_and_control_images(exported, controlnets, tmp_path):
    from edgesd.outputs import read_parameters

    pipe = load(exported, controlnets, "tiny-sd1", NETS["tiny-sd1"][:1], "onnxruntime")
    result = pipe(picture(*SIZE["tiny-sd1"]), PROMPT, control_image=control_picture(), num_inference_steps=2, seed=1)
    result.save(tmp_path / "out.png")
    stored = read_parameters(tmp_path / "out.png")
    assert stored["controlnets"] == [{"folder": "tiny-controlnet-sd1-exported",
                                      "manifest_sha256": pipe.provenance["controlnets"][0]["manifest_sha256"]}]
    assert stored["controlnet_conditioning_scale"] == [0.8] and stored["guess_mode"] is False
    assert len(stored["control_sha256"]) == 1


def test_canny_is_opencvs_as_diffusers_docs_apply_it():
    import cv2

    from edgesd.control import canny

    from PIL import ImageFilter

    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # edges of every strength
    source = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.5)))
    edges = cv2.Canny(source, 100, 200)[:, :, None]
    assert np.array_equal(np.asarray(canny(source)), np.concatenate([edges, edges, edges], axis=2))
    assert np.asarray(canny(source, 50, 120)).any() and not np.array_equal(np.asarray(canny(source, 50, 120)), np.asarray(canny(source)))
    with pytest.raises(InvalidInputError, match="low <= high"):
        canny(source, 200, 100)


def test_cli_runs_controlnets_on_each_input_and_checks_them_before_loading(exported, controlnets, tmp_path):
    from edgesd.control import canny
    from edgesd.outputs import read_parameters
    from test_cli import edgesd

    source, out = tmp_path / "in.png", tmp_path / "out.png"
    picture(*SIZE["tiny-sd1"]).save(source)
    net, bgr = controlnets["tiny-controlnet-sd1"][1], controlnets["tiny-controlnet-sd1-bgr"][1]
    control_picture().save(tmp_path / "map.png")
    done = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--steps", 4, "--seed", 2, "--precision", "fp32",
                  "--backend", "onnxruntime", "--controlnet", f"{net}:0.7", "--control-image", "canny",
                  "--controlnet", bgr, "--control-image", tmp_path / "map.png", "--control-end", 0.75, "-o", out)
    assert done.returncode == 0, done.stderr
    stored = read_parameters(out)
    assert stored["controlnet_conditioning_scale"] == [0.7, 0.8] and stored["control_guidance_end"] == [0.75, 0.75]
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", device="cpu", inference_precision="fp32",
                                controlnet=[net, bgr])
    want = pipe(source, PROMPT, num_inference_steps=4, seed=2, control_image=[canny(source), tmp_path / "map.png"],
                controlnet_conditioning_scale=[0.7, 0.8], control_guidance_end=0.75, size=tuple(stored["size"]))
    assert_images_close([Image.open(out).convert("RGB")], want.images)
    again = edgesd("img2img", exported["tiny-sd1"], "-i", source, "--replay", out, "-o", tmp_path / "again.png",
                   "--controlnet", net, "--control-image", "canny")
    assert again.returncode == 2 and "controlnet_conditioning_scale has 2 values for 1 ControlNet" in again.stderr
    missing = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--controlnet", net)
    assert missing.returncode == 2 and "0 --control-image for 1 --controlnet" in missing.stderr
    wrong = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--controlnet",
                   controlnets["tiny-controlnet-sd2"][1], "--control-image", "canny")
    assert wrong.returncode == 2 and "is for sd2 models" in wrong.stderr
    shown = edgesd("control", "canny", source, "-o", tmp_path / "edges.png")
    assert shown.returncode == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "edges.png")), np.asarray(canny(source)))
    info = edgesd("info", net)
    assert info.returncode == 0 and "a ControlNet folder for sd1 models" in info.stdout


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_controlnet_with_a_lora_and_a_tiny_vae_matches_diffusers(backend, diffusers_folders, exported, controlnets,
                                                                     lora_files, tiny_vae):
    """The ControlNet sees the LoRA's text encoder and the tiny VAE's latents: diffusers with the LoRA
    fused at 0.8 and vae=AutoencoderTiny."""
    width, height = SIZE["tiny-sd1"]
    lora = lora_files["sd1-both"]
    module = diffusers.ControlNetModel.from_pretrained(controlnets["tiny-controlnet-sd1"][0])
    reference_pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        diffusers_folders["tiny-sd1"], controlnet=module, vae=diffusers.AutoencoderTiny.from_pretrained(tiny_vae["diffusers"]),
        safety_checker=None, requires_safety_checker=False)
    reference_pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    reference_pipe.fuse_lora(lora_scale=0.8)
    call = dict(strength=0.75, guidance_scale=7.5, controlnet_conditioning_scale=1.1)
    want = reference_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=picture(width, height), control_image=control_picture(),
                          height=height, width=width, num_inference_steps=4, num_images_per_prompt=2,
                          generator=torch.Generator("cpu").manual_seed(4), **call).images
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32",
                                loras=[(lora, 0.8)], vae=tiny_vae["exported"], controlnet=controlnets["tiny-controlnet-sd1"][1])
    got = pipe(picture(width, height), PROMPT, negative_prompt=NEGATIVE, control_image=control_picture(), num_inference_steps=4,
               num_images=2, seed=4, **call).images
    assert_images_close(got, want)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_inpainting_unet_with_a_controlnet_matches_diffusers(backend, inpainting_model, controlnets, monkeypatch):
    """A 9-channel inpainting UNet: the ControlNet gets the 4 latent channels, the UNet all nine."""
    monkeypatch.setitem(SIZE, "tiny-sd1-inpaint", (96, 64))
    source, folder = inpainting_model
    nets, call = NETS["tiny-sd1"][:1], dict(guidance_scale=7.5, strength=0.8, controlnet_conditioning_scale=1.2)
    pipe = InpaintPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32",
                                controlnet=controlnets[nets[0]][1])
    got = ours(pipe, "tiny-sd1-inpaint", task="inpaint", control_image=[control_picture()], **call)
    assert_images_close(got, reference({"tiny-sd1-inpaint": source}, controlnets, "tiny-sd1-inpaint", nets, task="inpaint",
                                       control_image=[control_picture()], **call))


def test_an_int8_controlnet_keeps_its_effect(exported, controlnets, tmp_path):
    """`--precision int8` on a ControlNet stores int8 weights (activation int8 is calibrated on UNet
    inputs only), validated against its fp32 export; its image stays near the fp32 ControlNet's, far
    nearer than the ControlNet moves the image."""
    from edgesd.export import export_model
    from edgesd.model_folder import open_component_folder

    folder = export_model("random:tiny-controlnet-sd1", tmp_path / "int8", formats=("onnx", "openvino"), precision="int8")
    manifest = open_component_folder(folder, "controlnet").manifest
    entry = manifest["submodels"]["controlnet"]
    assert {f["precision"] for f in entry["formats"].values()} == {"int8-weights"}
    assert max(entry["quantized_max_abs_deviation"].values()) < 0.2
    assert manifest["provenance"]["options"]["precision"] == "controlnet=int8-weights"
    call = dict(strength=0.75, guidance_scale=7.5, num_inference_steps=4, seed=3, size=SIZE["tiny-sd1"],
                control_image=control_picture())
    for backend in ("onnxruntime", "openvino"):
        images = {}
        for name, net in (("fp32", controlnets["tiny-controlnet-sd1"][1]), ("int8", folder)):
            pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32",
                                        controlnet=net)
            images[name] = [np.asarray(pipe(picture(*SIZE["tiny-sd1"]), PROMPT, controlnet_conditioning_scale=scale,
                                            **call).images[0], np.int16) for scale in (0.0, 1.0)]
        effect = np.abs(images["fp32"][1] - images["fp32"][0]).mean()
        assert effect > 5 and np.abs(images["int8"][1] - images["fp32"][1]).mean() < 0.2 * effect


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_depth_is_transformers_depth_estimation_pipeline(backend, depth_estimator):
    """The same random DPT estimator through transformers' pipeline("depth-estimation") (the map diffusers'
    depth ControlNet docs stack to three channels) and torch-free: at most 1 of 255 off (float32 against
    torch's rounding at the uint8 cut) on at most 0.1% of the pixels."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor, pipeline

    from edgesd.control import DepthEstimator

    source, folder = depth_estimator
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (35, 45, 3), dtype=np.uint8)).resize((90, 70))
    estimate = pipeline("depth-estimation", model=DPTForDepthEstimation.from_pretrained(source),
                        image_processor=DPTImageProcessor.from_pretrained(source))
    want = np.asarray(estimate(image)["depth"])
    got = np.asarray(DepthEstimator.load(folder, backend, inference_precision="fp32")(image))
    assert got.shape == (70, 90, 3) and np.array_equal(got[..., 0], got[..., 2])
    off = np.abs(got[..., 0].astype(np.int16) - want)
    assert off.max() <= 1 and (off > 0).mean() <= 0.001
    assert want.std() > 20, "the random estimator's depth is flat: the comparison would prove little"


def test_bicubic_resize_is_torchs():
    from edgesd.control import bicubic_resize

    values = np.random.default_rng(2).standard_normal((13, 17))
    for height, width in ((40, 50), (7, 9), (13, 17), (100, 5)):
        want = torch.nn.functional.interpolate(torch.from_numpy(values)[None, None], size=(height, width), mode="bicubic",
                                               align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(bicubic_resize(values, height, width), want, atol=1e-12)


@pytest.mark.parametrize("settings", [
    dict(size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3),  # Intel/dpt-large's kind
    dict(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),  # Depth Anything's
    dict(size={"height": 48, "width": 40}, keep_aspect_ratio=True, ensure_multiple_of=8, do_pad=True, size_divisor=32,
         image_mean=[0.2, 0.4, 0.6], image_std=[0.3, 0.5, 0.7]),
])
def test_depth_preprocessing_is_dpt_image_processors(settings):
    from transformers import DPTImageProcessor

    from edgesd.control import preprocess

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (61, 83, 3), dtype=np.uint8))
    want = DPTImageProcessor(**settings)(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(preprocess(image, {"image_mean": [0.5] * 3, **settings}), want, atol=1e-5)


def test_depth_in_the_cli_and_what_is_not_exported(exported, controlnets, depth_estimator, tmp_path):
    from edgesd.control import DepthEstimator
    from edgesd.export import export_model
    from edgesd.errors import EdgesdError
    from test_cli import edgesd

    source, out, folder = tmp_path / "in.png", tmp_path / "out.png", depth_estimator[1]
    picture(*SIZE["tiny-sd1"]).save(source)
    net = controlnets["tiny-controlnet-sd1"][1]
    done = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--steps", 4, "--seed", 2, "--precision", "fp32",
                  "--backend", "openvino", "--controlnet", net, "--control-image", "depth", "--depth-model", folder, "--keep-size",
                  "-o", out)
    assert done.returncode == 0, done.stderr
    depth = DepthEstimator.load(folder, "openvino", inference_precision="fp32")
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend="openvino", device="cpu", inference_precision="fp32", controlnet=net)
    assert_images_close([Image.open(out).convert("RGB")],
                        pipe(source, PROMPT, num_inference_steps=4, seed=2, control_image=depth(source)).images)
    shown = edgesd("control", "depth", source, "--depth-model", folder, "-o", tmp_path / "depth.png", "--backend", "onnxruntime")
    assert shown.returncode == 0, shown.stderr
    assert np.abs(np.asarray(Image.open(tmp_path / "depth.png"), np.int16) - np.asarray(depth(source), np.int16)).max() <= 2
    missing = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--controlnet", net, "--control-image", "depth")
    assert missing.returncode == 2 and "--control-image depth needs --depth-model FOLDER" in missing.stderr
    wrong = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--controlnet", net, "--control-image", "depth",
                   "--depth-model", net)
    assert wrong.returncode == 2 and "is a ControlNet folder, not a depth estimator folder" in wrong.stderr
    info = edgesd("info", folder)
    assert info.returncode == 0 and "a depth estimator folder" in info.stdout
    anything = tmp_path / "depth-anything"  # its config is all the refusal reads
    anything.mkdir()
    (anything / "config.json").write_text(json.dumps({"model_type": "depth_anything", "architectures": ["DepthAnythingForDepthEstimation"]}))
    with pytest.raises(EdgesdError, match="a depth_anything depth estimator cannot be exported yet .* Intel/dpt-hybrid-midas"):
        export_model(str(anything), tmp_path / "out-depth")
