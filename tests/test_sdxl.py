"""SDXL against diffusers' StableDiffusionXLImg2ImgPipeline / XLInpaintPipeline, by seed, on random
SDXL-layout models whose two text encoders have different widths (32 and 48), so a wrong
concatenation order or pooled source cannot pass; and a refiner layout (second encoder only,
aesthetic-score time ids). Tolerance as for SD (test_pipeline_parity.assert_images_close); the
deliberate breaks at the end (time ids in (width, height) order, zeros not forced, the refiner's
aesthetic scores swapped) show the comparison fails for them.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline, InpaintPipeline
from edgesd.errors import InvalidInputError, ModelFolderError

from test_pipeline_parity import assert_images_close

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

PROMPT = "a red house by a lake"
BACKENDS = ("onnxruntime", "openvino")


def image(width=170, height=106) -> Image.Image:
    """Not square, sides not multiples of 8: floored as diffusers does."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 7) % 256], axis=-1).astype(np.uint8))


@pytest.fixture(scope="module")
def reference(sdxl):
    from edgesd.export.load import load_pipeline

    pipes = {name: load_pipeline(folders["diffusers"]) for name, folders in sdxl.items()}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="module")
def pipes(sdxl):
    return {(name, backend): Img2ImgPipeline.load(folders["exported"], backend=backend, device="cpu", inference_precision="fp32")
            for name, folders in sdxl.items() for backend in BACKENDS}


def expected(pipe, seed=3, picture=None, **call):
    call = {"prompt": PROMPT, "image": picture or image(), "strength": 0.6, "num_inference_steps": 4, "num_images_per_prompt": 2, **call}
    return pipe(generator=torch.Generator("cpu").manual_seed(seed), **call).images


def ours(pipe, seed=3, picture=None, **call):
    call = {"strength": 0.6, "num_inference_steps": 4, "num_images": 2, **call}
    return pipe(picture or image(), PROMPT, seed=seed, **call).images


BASE_CASES = {
    "guided, no negative prompt (zeros forced)": dict(guidance_scale=5.0),
    "negative prompt and prompt_2": dict(guidance_scale=5.0, negative_prompt="grey, blurry", prompt_2="a dog in snow"),
    "no guidance": dict(guidance_scale=0.0, prompt_2="a dog in snow"),
    "explicit sizes and crops, negative_prompt_2": dict(
        guidance_scale=6.0, negative_prompt="grey", negative_prompt_2="blue", original_size=(300, 100),
        target_size=(96, 160), crops_coords_top_left=(3, 17), negative_original_size=(64, 64), negative_target_size=(80, 40)),
    "DPM++ at full strength": dict(guidance_scale=4.0, strength=1.0, scheduler="DPMSolverMultistepScheduler"),
}


def _diffusers_call(call: dict, pipe) -> dict:
    call = dict(call)
    if scheduler := call.pop("scheduler", None):
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return call


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BASE_CASES)
def test_sdxl_img2img_matches_diffusers(pipes, reference, backend, case):
    pipe = reference["tiny-sdxl"]
    saved = pipe.scheduler
    try:
        want = expected(pipe, **_diffusers_call(BASE_CASES[case], pipe))
    finally:
        pipe.scheduler = saved
    assert_images_close(ours(pipes["tiny-sdxl", backend], **BASE_CASES[case]), want)


REFINER_CASES = {
    "default aesthetic scores, empty negative encoded": dict(guidance_scale=5.0),
    "aesthetic scores and negative crop": dict(guidance_scale=7.0, negative_prompt="grey", aesthetic_score=9.0,
                                               negative_aesthetic_score=1.0, negative_crops_coords_top_left=(8, 8),
                                               original_size=(512, 256)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", REFINER_CASES)
def test_sdxl_refiner_matches_diffusers(pipes, reference, backend, case):
    """The refiner's one encoder gets `prompt` (diffusers zips prompts with the encoders it has)."""
    call = {**REFINER_CASES[case], "prompt_2": "ignored by a refiner"}
    assert_images_close(ours(pipes["tiny-sdxl-refiner", backend], **call), expected(reference["tiny-sdxl-refiner"], **call))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_sdxl_inpaint_matches_diffusers(sdxl, reference, backend, strength):
    """A 4-channel SDXL UNet inpainting: the known region put back after each step, as StableDiffusionXLInpaintPipeline."""
    source = reference["tiny-sdxl"]
    pipe = diffusers.StableDiffusionXLInpaintPipeline(**source.components)
    pipe.set_progress_bar_config(disable=True)
    mask = Image.new("L", image().size, 0)
    mask.paste(255, (40, 20, 130, 90))
    want = pipe(prompt=PROMPT, image=image(), mask_image=mask, strength=strength, num_inference_steps=4, guidance_scale=5.0,
                height=104, width=168, generator=torch.Generator("cpu").manual_seed(5)).images
    ours = InpaintPipeline.load(sdxl["tiny-sdxl"]["exported"], backend=backend, device="cpu", inference_precision="fp32")
    got = ours(image(), mask, PROMPT, strength=strength, num_inference_steps=4, guidance_scale=5.0, seed=5, size=(168, 104))
    assert_images_close(got.images, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdxl_inpainting_model_matches_diffusers_with_its_defaults(tmp_path_factory, backend):
    """A 9-channel SDXL inpainting UNet (mask and masked image beside the latents), with diffusers'
    default strength for SDXL inpainting (0.9999: the image noised, 49 of 50 steps; here 9 of 10). Its
    guidance (7.5) is given: edgesd's comes from the folder (the recipe's 5, as SDXL img2img's)."""
    from edgesd.export import export_model, recipes
    from edgesd.export.load import load_pipeline
    from edgesd.export.random_model import build_random_pipeline

    root = tmp_path_factory.getbasetemp() / "sdxl-inpaint"
    if not (root / "exported").exists():
        build_random_pipeline(recipes.load("tiny-sdxl-inpaint"), root / "diffusers")
        export_model("random:tiny-sdxl-inpaint", root / "exported", formats=("onnx", "openvino"))
    pipe = diffusers.StableDiffusionXLInpaintPipeline(**load_pipeline(root / "diffusers").components)
    pipe.set_progress_bar_config(disable=True)
    mask = Image.new("L", image().size, 0)
    mask.paste(255, (40, 20, 130, 90))
    want = pipe(prompt=PROMPT, image=image(), mask_image=mask, num_inference_steps=10, height=104, width=168,
                generator=torch.Generator("cpu").manual_seed(6)).images
    ours = InpaintPipeline.load(root / "exported", backend=backend, device="cpu", inference_precision="fp32")
    got = ours(image(), mask, PROMPT, num_inference_steps=10, guidance_scale=7.5, seed=6, size=(168, 104))
    assert got.settings["strength"] == 0.9999 and len(got.timings["steps"]) == 9
    assert_images_close(got.images, want)


def test_optimum_sdxl_folder_loads_and_matches(sdxl, reference, tmp_path):
    """`optimum-cli export onnx` of an SDXL repo (model_index.json gives the pipeline's config) runs as it is."""
    from optimum.exporters.onnx import main_export

    main_export(str(sdxl["tiny-sdxl"]["diffusers"]), tmp_path / "optimum", task="image-to-image", do_validation=False)
    pipe = Img2ImgPipeline.load(tmp_path / "optimum", backend="onnxruntime", device="cpu", inference_precision="fp32")
    assert pipe.folder.manifest["family"] == "sdxl" and pipe.unet_latent_multiple == 2  # optimum's fixed 2x upsampling
    call = dict(guidance_scale=5.0, prompt_2="a dog in snow", picture=image(160, 96))  # sides it takes
    assert_images_close(ours(pipe, **call), expected(reference["tiny-sdxl"], **call))


# -- the comparison catches what SDXL adds -------------------------------------------------------------

def test_catches_time_ids_in_width_height_order(pipes, reference, monkeypatch):
    pipe = pipes["tiny-sdxl", "onnxruntime"]
    time_ids = pipe.family.time_ids
    monkeypatch.setattr(pipe, "family", dataclasses.replace(pipe.family))
    object.__setattr__(pipe.family, "time_ids", lambda settings, size, negative=False: time_ids(settings, size[::-1], negative))
    pipe.reuse_encodings = False
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipe, guidance_scale=5.0), expected(reference["tiny-sdxl"], guidance_scale=5.0))


def test_catches_zeros_not_forced(pipes, reference, monkeypatch):
    pipe = pipes["tiny-sdxl", "onnxruntime"]
    monkeypatch.setattr(pipe, "family", dataclasses.replace(pipe.family, force_zeros_for_empty_prompt=False))
    pipe.reuse_encodings = False
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipe, guidance_scale=5.0), expected(reference["tiny-sdxl"], guidance_scale=5.0))


def test_catches_swapped_aesthetic_scores(pipes, reference):
    call = dict(guidance_scale=5.0, aesthetic_score=9.0, negative_aesthetic_score=1.0)
    swapped = dict(call, aesthetic_score=1.0, negative_aesthetic_score=9.0)
    with pytest.raises(AssertionError):
        assert_images_close(ours(pipes["tiny-sdxl-refiner", "onnxruntime"], **swapped), expected(reference["tiny-sdxl-refiner"], **call))


# -- options and folders -------------------------------------------------------------------------------

def test_sdxl_options_are_checked(pipes):
    pipe = pipes["tiny-sdxl", "onnxruntime"]
    with pytest.raises(InvalidInputError, match="original_size"):
        pipe(image(), PROMPT, original_size=(0, 64))
    with pytest.raises(InvalidInputError, match="aesthetic_score"):
        pipe(image(), PROMPT, aesthetic_score=float("nan"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'prompt_3'"):
        pipe(image(), PROMPT, prompt_3="x")


def test_sdxl_options_on_an_sd_model_are_refused(exported):
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", device="cpu")
    with pytest.raises(InvalidInputError, match="prompt_2: not an option of sd models"):
        pipe(image(), PROMPT, prompt_2="x", num_inference_steps=2)


def test_sdxl_defaults_and_stored_options(pipes, tmp_path):
    """diffusers' SDXL img2img defaults (strength 0.3, guidance 5); the family's options are stored
    with the image, so a replay restores them."""
    from edgesd.outputs import read_parameters

    result = pipes["tiny-sdxl", "onnxruntime"](image(), PROMPT, prompt_2="a dog", original_size=(64, 32), seed=1,
                                               num_inference_steps=4)
    assert result.settings["strength"] == 0.3 and result.settings["guidance_scale"] == 5.0
    result.save(tmp_path / "out.png")
    stored = read_parameters(tmp_path / "out.png")
    assert stored["prompt_2"] == "a dog" and stored["original_size"] == [64, 32]


def test_an_sdxl_folder_without_its_second_encoder_is_refused(sdxl, tmp_path):
    folder = tmp_path / "xl"
    shutil.copytree(sdxl["tiny-sdxl"]["exported"], folder)
    manifest = json.loads((folder / "edgesd.json").read_text())
    del manifest["submodels"]["text_encoder_2"]
    (folder / "edgesd.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="submodels lacks text_encoder_2"):
        Img2ImgPipeline.load(folder)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sdxl-both", "sdxl-both-kohya"])
def test_sdxl_lora_matches_diffusers(sdxl, sdxl_loras, reference, pipes, backend, name):
    """Both text encoders and the UNet (its pooled/time-id embedding too), diffusers' format and
    kohya's original names (label_emb, input_blocks ...), against load_lora_weights + fuse_lora of the
    same layers in diffusers' format."""
    from edgesd.export.load import load_pipeline

    pipe = load_pipeline(sdxl["tiny-sdxl"]["diffusers"])
    pipe.set_progress_bar_config(disable=True)
    lora = sdxl_loras["sdxl-both"]
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    pipe.fuse_lora(lora_scale=0.7)
    call = dict(guidance_scale=5.0, negative_prompt="grey")
    want = expected(pipe, **call)
    moved = np.abs(np.asarray(want[0], np.int16) - np.asarray(expected(reference["tiny-sdxl"], **call)[0], np.int16))
    assert moved.max() > 10 and moved.mean() > 1, "the LoRA barely changes the image: the comparison would prove little"
    ours_pipe = Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], backend=backend, device="cpu", inference_precision="fp32",
                                     loras=[(sdxl_loras[name], 0.7)])
    assert_images_close(ours(ours_pipe, **call), want)


def test_loras_of_the_other_family_are_refused_by_name(sdxl, sdxl_loras, exported, lora_files):
    from edgesd.lora import LoraError

    with pytest.raises(LoraError, match="sdxl-both.safetensors has layers for text_encoder_2 .an SDXL LoRA."):
        Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", loras=[sdxl_loras["sdxl-both"]])
    with pytest.raises(LoraError, match="has layers for text_encoder .* tiny-sdxl-refiner-exported .sdxl. does not have"):
        Img2ImgPipeline.load(sdxl["tiny-sdxl-refiner"]["exported"], backend="onnxruntime", loras=[sdxl_loras["sdxl-both"]])
    with pytest.raises(LoraError, match="the LoRA is for another model"):  # an SD 1.x LoRA: its UNet layers do not fit
        Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], backend="onnxruntime", loras=[lora_files["sd1-unet"]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_base_and_refiner_hand_off_matches_diffusers(pipes, reference, backend):
    """Base (img2img, denoising_end) -> latents -> refiner (denoising_start), as diffusers' ensemble of
    expert denoisers; the refiner's own generator draws nothing (no noise added again)."""
    from edgesd.pipelines.img2img import refine

    base, refiner = reference["tiny-sdxl"], reference["tiny-sdxl-refiner"]
    call = dict(strength=0.9, num_inference_steps=10, guidance_scale=5.0, negative_prompt="grey", num_images_per_prompt=1)
    latents = base(prompt=PROMPT, image=image(), denoising_end=0.7, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(4), **call).images
    want = refiner(prompt=PROMPT, image=latents, denoising_start=0.7, generator=torch.Generator("cpu").manual_seed(4),
                   **call).images
    call["num_images"] = call.pop("num_images_per_prompt")
    result = refine(pipes["tiny-sdxl", backend], pipes["tiny-sdxl-refiner", backend], image(), PROMPT, 0.7, seed=4, **call)
    assert_images_close(result.images, want)
    assert result.settings["high_noise_frac"] == 0.7 and result.provenance["refiner"]["model"] == "tiny-sdxl-refiner-exported"
    assert len(result.timings["steps"]) == 9  # int(10 * 0.9) steps in all, split between the two


def test_denoising_range_is_checked(pipes):
    pipe = pipes["tiny-sdxl", "onnxruntime"]
    with pytest.raises(InvalidInputError, match="denoising_start 0.8 must be below denoising_end 0.5"):
        pipe(image(), PROMPT, denoising_start=0.8, denoising_end=0.5)
    with pytest.raises(InvalidInputError, match="leave none of the 2 steps"):
        pipe(image(), PROMPT, num_inference_steps=2, strength=0.5, denoising_end=0.1)


def test_cli_runs_sdxl_with_its_options_and_a_refiner(sdxl, pipes, tmp_path):
    """--prompt-2 and --refiner/--high-noise-frac from the CLI give what the API gives; the stored
    parameters name the hand-off, and a misfit (SD options on the refiner's steps) is refused before loading."""
    from test_cli import INPUT, edgesd

    from edgesd.pipelines.img2img import refine

    base, refiner = sdxl["tiny-sdxl"]["exported"], sdxl["tiny-sdxl-refiner"]["exported"]
    out = tmp_path / "o.png"
    done = edgesd("img2img", base, "-i", INPUT, "-p", PROMPT, "--prompt-2", "a dog", "--refiner", refiner, "--high-noise-frac",
                  0.6, "--steps", 6, "--strength", 0.8, "--seed", 2, "--backend", "onnxruntime", "--precision", "fp32",
                  "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)["results"][0]["settings"]
    assert stored["high_noise_frac"] == 0.6 and stored["prompt_2"] == "a dog" and stored["refiner"]["model"] == refiner.name
    api = refine(pipes["tiny-sdxl", "onnxruntime"], pipes["tiny-sdxl-refiner", "onnxruntime"], Image.open(INPUT), PROMPT, 0.6,
                 prompt_2="a dog", num_inference_steps=6, strength=0.8, seed=2, size=tuple(stored["size"]))
    assert_images_close([Image.open(out).convert("RGB")], api.images)
    done = edgesd("img2img", base, "-i", INPUT, "-p", PROMPT, "--refiner", refiner, "--high-noise-frac", 0.95, "--steps", 4,
                  "-o", tmp_path / "p.png")
    assert done.returncode == 2 and "leave none of the 4 steps" in done.stderr


def test_sdxl_vae_is_opened_in_fp32_when_fp16_is_asked(sdxl, monkeypatch):
    """SDXL's VAE overflows in fp16 (force_upcast): as diffusers upcasts it, it runs in fp32 while the rest runs as asked."""
    from edgesd.pipelines import base
    from edgesd.sessions.fake import FakeSession

    asked = {}

    def record(backend, path, device, precision, **options):
        asked[path.parent.name] = precision
        return FakeSession("unet")

    monkeypatch.setattr(base, "open_session", record)
    Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], backend="openvino", device="cpu", inference_precision="fp16")
    assert asked == {"text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "fp16", "vae_encoder": "fp32", "vae_decoder": "fp32"}
    asked.clear()
    Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], backend="openvino", device="cpu", inference_precision="bf16")
    assert set(asked.values()) == {"bf16"}  # bf16 has fp32's range


def test_fp16_export_keeps_the_sdxl_vae_in_fp32(sdxl, pipes, tmp_path):
    """`--precision fp16` (and --target gpu/cuda): the text encoders and UNet in fp16, SDXL's VAE left
    in fp32 (it overflows in fp16); the image stays close to the fp32 export's."""
    from edgesd.export import export_model

    folder = export_model("random:tiny-sdxl", tmp_path / "fp16", formats=("onnx",), precision="fp16")
    manifest = json.loads((folder / "edgesd.json").read_text())
    precisions = {name: entry["formats"]["onnx"]["precision"] for name, entry in manifest["submodels"].items()}
    assert precisions == {"text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "fp16", "vae_encoder": "fp32",
                          "vae_decoder": "fp32"}
    half = Img2ImgPipeline.load(folder, backend="onnxruntime", device="cpu")
    got, want = (np.asarray(ours(pipe, guidance_scale=5.0)[0], np.float64) for pipe in (half, pipes["tiny-sdxl", "onnxruntime"]))
    assert 10 * np.log10(255**2 / np.mean((got - want) ** 2)) > 40  # dB


@pytest.fixture(scope="module")
def tiny_vae_xl(tmp_path_factory) -> dict:
    from edgesd.export import export_model, recipes
    from edgesd.export.random_model import build_random_tiny_vae

    root = tmp_path_factory.mktemp("taesdxl")
    build_random_tiny_vae(recipes.load("tiny-taesdxl"), root / "diffusers")
    return {"diffusers": root / "diffusers",
            "exported": export_model("random:tiny-taesdxl", root / "taesdxl", formats=("onnx", "openvino"))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tiny_sdxl_vae_matches_diffusers(sdxl, tiny_vae_xl, backend):
    """TAESDXL's architecture (AutoencoderTiny) as the VAE of an SDXL model, as diffusers' vae=AutoencoderTiny."""
    from edgesd.export.load import load_pipeline

    components = load_pipeline(sdxl["tiny-sdxl"]["diffusers"]).components
    components["vae"] = diffusers.AutoencoderTiny.from_pretrained(tiny_vae_xl["diffusers"])
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    ours_pipe = Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], backend=backend, device="cpu", inference_precision="fp32",
                                     vae=tiny_vae_xl["exported"])
    assert_images_close(ours(ours_pipe, guidance_scale=5.0), expected(pipe, guidance_scale=5.0))


def test_a_tiny_vae_of_the_other_family_is_refused_by_name(sdxl, tiny_vae_xl, tiny_vae, exported):
    with pytest.raises(ModelFolderError, match="the VAE taesd is for sd models, tiny-sdxl-exported is an sdxl model"):
        Img2ImgPipeline.load(sdxl["tiny-sdxl"]["exported"], vae=tiny_vae["exported"])
    with pytest.raises(ModelFolderError, match="the VAE taesdxl is for sdxl models, tiny-sd1 is an sd model"):
        Img2ImgPipeline.load(exported["tiny-sd1"], vae=tiny_vae_xl["exported"])
