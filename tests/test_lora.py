"""LoRAs merged at load time, against diffusers (load_lora_weights + fuse_lora(lora_scale=w), or
set_adapters' weights for two) by seed, in fp32, on both engines; random LoRA files in diffusers' and
kohya's formats (conftest.lora_files). Same tolerance as test_pipeline_parity; every LoRA moves the
image far past it (checked), and a wrong alpha/rank scale or a transposed weight fails it (shown)."""

import json
import re
import shutil
from functools import partial

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgesd import Img2ImgPipeline, InpaintPipeline
from edgesd.lora import QUANTIZED, LoraError, LoraMerge, read_lora, shared_by
from edgesd.outputs import read_parameters

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_cli import edgesd  # noqa: E402
from test_pipeline_parity import NEGATIVE, PROMPT, assert_images_close, test_image  # noqa: E402

BACKENDS = ("onnxruntime", "openvino")
CALL = dict(strength=0.75, num_inference_steps=4, guidance_scale=7.5, seed=7)


def reference(folder, loras, scheduler=None, **call):
    """diffusers' images with `loras` [(file, weight)]: one fused at its scale, several as weighted adapters."""
    call = {**CALL, **call}
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    for n, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"lora{n}")
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1])
    elif loras:
        pipe.set_adapters([f"lora{n}" for n in range(len(loras))], adapter_weights=[w for _, w in loras])
    guided = call["guidance_scale"] > 1
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE if guided else None, image=test_image(),
                strength=call["strength"], num_inference_steps=call["num_inference_steps"],
                guidance_scale=call["guidance_scale"], generator=torch.Generator("cpu").manual_seed(call["seed"])).images


def ours(folder, backend, loras, scheduler=None, **call):
    call = {**CALL, **call}
    pipe = Img2ImgPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32", loras=loras)
    guided = call["guidance_scale"] > 1
    return pipe(test_image(), PROMPT, negative_prompt=NEGATIVE if guided else None, scheduler=scheduler, **call)


def assert_lora_matters(image, base):
    moved = np.abs(np.asarray(image[0], np.int16) - np.asarray(base[0], np.int16))
    assert moved.max() > 10 and moved.mean() > 1, "the LoRA barely changes the image: the comparison would prove little"


@pytest.fixture(scope="module")
def base_images(diffusers_folders):
    return {model: reference(folder, []) for model, folder in diffusers_folders.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,weight", [
    ("sd1-both", 0.7),  # diffusers format: UNet (attention, ff, 1x1 and 3x3 convs, time embeddings) + text encoder
    ("sd1-unet", 1.0),
    ("sd1-text", 1.3),
    ("sd1-both-kohya", 0.7),  # kohya/A1111: lora_unet_/lora_te_, .alpha
    ("sd1-unet-original-names", 0.8),  # kohya with the original UNet's input_blocks_N_M names
    ("sd2-both", 0.6),  # SD2: linear proj_in/proj_out, penultimate CLIP layer
])
def test_lora_matches_diffusers(exported, diffusers_folders, lora_files, base_images, backend, name, weight):
    model = "tiny-sd2" if name.startswith("sd2") else "tiny-sd1"
    loras = [(lora_files[name], weight)]
    same_in_diffusers_names = {"sd1-unet-original-names": "sd1-unet-kohya"}.get(name, name)
    expected = reference(diffusers_folders[model], [(lora_files[same_in_diffusers_names], weight)])
    assert_lora_matters(expected, base_images[model])
    result = ours(exported[model], backend, loras)
    assert_images_close(result.images, expected)
    assert result.parameters["loras"] == [{"file": f"{name}.safetensors", "sha256": read_lora(lora_files[name]).sha256,
                                           "weight": weight}]


def test_kohya_and_diffusers_formats_read_as_the_same_lora(lora_files):
    """The kohya file is diffusers' conversion of sd1-both's layers, alphas kept: the same deltas."""
    diffusers_format, kohya = read_lora(lora_files["sd1-both"]), read_lora(lora_files["sd1-both-kohya"])
    for submodel in ("text_encoder", "unet"):
        underscored = {name.replace(".", "_"): layer for name, layer in diffusers_format.layers[submodel].items()}
        assert underscored.keys() == kohya.layers[submodel].keys()
        for name, layer in kohya.layers[submodel].items():
            np.testing.assert_allclose(layer.delta(0.7), underscored[name].delta(0.7), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_loras_add_up_as_weighted_adapters(exported, diffusers_folders, lora_files, backend):
    loras = [(lora_files["sd1-unet"], 0.8), (lora_files["sd1-both-kohya"], 0.5)]  # two formats at once
    expected = reference(diffusers_folders["tiny-sd1"], loras)
    assert_images_close(ours(exported["tiny-sd1"], backend, loras).images, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lcm_lora_shape(exported, diffusers_folders, lora_files, base_images, backend):
    """As LCM-LoRA is used: LCMScheduler, 4 steps, guidance 1 (no negative prompt)."""
    loras = [(lora_files["sd1-both"], 1.0)]
    call = dict(strength=1.0, num_inference_steps=4, guidance_scale=1.0)
    expected = reference(diffusers_folders["tiny-sd1"], loras, "LCMScheduler", **call)
    assert_lora_matters(expected, reference(diffusers_folders["tiny-sd1"], [], "LCMScheduler", **call))
    assert_images_close(ours(exported["tiny-sd1"], backend, loras, "LCMScheduler", **call).images, expected)


@pytest.mark.parametrize("layout", ["onnx", "openvino"])
def test_optimum_folders(optimum_exported, diffusers_folders, lora_files, layout):
    """Folders from optimum-cli: torch.onnx's names (ONNX) and OpenVINO's PyTorch frontend's (IR)."""
    loras = [(lora_files["sd1-both-kohya"], 0.9)]
    backend = {"onnx": "onnxruntime"}.get(layout, layout)
    assert_images_close(ours(optimum_exported[layout], backend, loras).images, reference(diffusers_folders["tiny-sd1"], loras))


@pytest.mark.parametrize("backend", BACKENDS)
def test_inpainting_with_a_lora_matches_diffusers(exported, diffusers_folders, lora_files, backend):
    from test_inpaint_parity import mask_of, picture

    size, loras = (86, 54), [(lora_files["sd1-both-kohya"], 0.9)]
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(diffusers_folders["tiny-sd1"], safety_checker=None,
                                                                    requires_safety_checker=False)
    call = dict(strength=1.0, num_inference_steps=4, guidance_scale=6.0)

    def reference_images():
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=picture(*size), mask_image=mask_of(*size), width=size[0],
                    height=size[1], generator=torch.Generator("cpu").manual_seed(3), **call).images

    base = reference_images()
    pipe.load_lora_weights(str(loras[0][0].parent), weight_name=loras[0][0].name)
    pipe.fuse_lora(lora_scale=loras[0][1])
    expected = reference_images()
    assert_lora_matters(expected, base)
    ours_ = InpaintPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32", loras=loras)
    result = ours_(picture(*size), mask_of(*size), PROMPT, negative_prompt=NEGATIVE, seed=3, size=size, **call)
    assert_images_close(result.images, expected)
    assert result.parameters["loras"][0]["file"] == "sd1-both-kohya.safetensors"


@pytest.mark.parametrize("break_", ["alpha ignored", "weight transposed"])
def test_the_comparison_catches(exported, diffusers_folders, lora_files, monkeypatch, break_):
    loras = [(lora_files["sd1-both"], 0.7)]
    if break_ == "alpha ignored":  # scale = weight instead of weight x alpha / rank
        original = read_lora

        def without_alpha(path, weight=1.0):
            lora = original(path, weight)
            for layers in lora.layers.values():
                for layer in layers.values():
                    layer.alpha = None
            return lora
        monkeypatch.setattr("edgesd.pipelines.base.read_lora", without_alpha)
    else:  # square linear weights merged with the delta transposed
        from edgesd.sessions import onnxruntime as session

        add = session.add_delta

        def transposed(base, delta, is_transposed, module):
            square = delta.ndim == 2 and delta.shape[0] == delta.shape[1]
            return add(base, delta.T if square else delta, is_transposed, module)
        monkeypatch.setattr(session, "add_delta", transposed)
    broken, expected = ours(exported["tiny-sd1"], "onnxruntime", loras).images, reference(diffusers_folders["tiny-sd1"], loras)
    with pytest.raises(AssertionError, match="levels"):
        assert_images_close(broken, expected)


def test_set_loras_reloads_only_what_they_change(exported, lora_files, tmp_path):
    folder = exported["tiny-sd1"]
    pipe = Img2ImgPipeline.load(folder, backend="onnxruntime", device="cpu", loras=[(lora_files["sd1-unet"], 1.0)])
    vae, text_encoder = pipe.sessions["vae_decoder"], pipe.sessions["text_encoder"]
    pipe(test_image(), PROMPT, **CALL)  # caches the prompt's encoding: the new text encoder must not reuse it
    pipe.set_loras([(lora_files["sd1-text"], 1.0)])
    assert pipe.sessions["vae_decoder"] is vae and pipe.sessions["text_encoder"] is not text_encoder
    fresh = Img2ImgPipeline.load(folder, backend="onnxruntime", device="cpu", loras=[(lora_files["sd1-text"], 1.0)])
    for a, b in zip(pipe(test_image(), PROMPT, **CALL).images, fresh(test_image(), PROMPT, **CALL).images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    pipe.set_loras([])
    assert "loras" not in pipe.provenance
    plain = Img2ImgPipeline.load(folder, backend="onnxruntime", device="cpu")
    assert np.array_equal(np.asarray(pipe(test_image(), PROMPT, **CALL).images[0]),
                          np.asarray(plain(test_image(), PROMPT, **CALL).images[0]))
    with pytest.raises(LoraError, match="does not fit"):  # the pipeline keeps what it had
        pipe.set_loras([lora_file(tmp_path / "other.safetensors", {"unet.no_such.module": ((2, 4), (4, 2))})])
    assert "loras" not in pipe.provenance
    assert np.array_equal(np.asarray(pipe(test_image(), PROMPT, **CALL).images[0]),
                          np.asarray(plain(test_image(), PROMPT, **CALL).images[0]))


def lora_file(path, layers: dict[str, tuple[tuple, tuple]]):
    """A LoRA with random layers {module: (down shape, up shape)} in diffusers' names."""
    rng = np.random.default_rng(0)
    tensors = {}
    for module, (down, up) in layers.items():
        tensors[f"{module}.lora_A.weight"] = rng.standard_normal(down).astype(np.float32)
        tensors[f"{module}.lora_B.weight"] = rng.standard_normal(up).astype(np.float32)
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lora_for_another_model_is_refused(exported, backend, tmp_path):
    # an SD 1.5 LoRA: its deeper blocks do not exist in the tiny model
    sd15 = lora_file(tmp_path / "sd15.safetensors", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": ((4, 64), (64, 4)),
        "unet.down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_q": ((4, 640), (640, 4))})
    with pytest.raises(LoraError, match=r"sd15.safetensors does not fit this model: 1 unet layer.*down_blocks.2.attentions.1"):
        Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", loras=[sd15])
    wider = lora_file(tmp_path / "wider.safetensors", {  # the module exists, with other sizes
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": ((4, 768), (768, 4))})
    with pytest.raises(LoraError, match=r"q_proj has shape \(768, 768\), the model's weight \(32, 32\): the LoRA is for another model"):
        Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", loras=[wider])


def test_files_that_are_not_loras_are_refused(tmp_path):
    def write(name, tensors):
        save_file({k: np.ones(v, np.float32) for k, v in tensors.items()}, tmp_path / name)
        return tmp_path / name

    cases = {
        "loha.safetensors": ({"lora_unet_a_b.hada_w1_a": (2, 2)}, "LyCORIS"),
        "tucker.safetensors": ({"lora_unet_a.lora_down.weight": (2, 4, 3, 3), "lora_unet_a.lora_mid.weight": (2, 2, 3, 3),
                                "lora_unet_a.lora_up.weight": (4, 2, 1, 1)}, "Tucker"),
        "ranks.safetensors": ({"lora_unet_a.lora_down.weight": (2, 4), "lora_unet_a.lora_up.weight": (4, 3)}, "do not fit together"),
        "alpha.safetensors": ({"lora_unet_a.lora_down.weight": (2, 4), "lora_unet_a.lora_up.weight": (4, 2),
                               "lora_unet_a.alpha": (2,)}, "should hold one number"),
        "half.safetensors": ({"lora_unet_x.lora_down.weight": (2, 4)}, "no down/up pair"),
        "other.safetensors": ({"model.diffusion_model.x.weight": (2, 2)}, "not LoRA layers"),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(LoraError, match=message):
            read_lora(write(name, tensors))
    conv1 = "down_blocks.0.resnets.0.conv1"
    twice = write("twice.safetensors", {f"unet.{conv1}.lora_A.weight": (2, 4, 3, 3), f"unet.{conv1}.lora_B.weight": (32, 2, 1, 1),
                                        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": (2, 4, 3, 3),
                                        "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight": (32, 2, 1, 1)})
    with pytest.raises(LoraError, match=f"changes {conv1} twice"):
        LoraMerge("unet", [read_lora(twice)], 1).targets({conv1: (32, 4, 3, 3)})
    with pytest.raises(LoraError, match="conv_in's down twice"):
        read_lora(write("same.safetensors", {"unet.conv_in.lora_A.weight": (2, 4, 3, 3), "lora_unet_conv_in.lora_down.weight": (2, 4, 3, 3)}))
    with pytest.raises(LoraError, match="finite"):
        read_lora(twice, float("nan"))
    save_file({"unet.a.lora_A.weight": np.ones((2, 4), np.float32), "unet.a.lora_B.weight": np.ones((4, 2), np.float32)},
              tmp_path / "meta.safetensors", metadata={"lora_adapter_metadata": "{not json"})
    with pytest.raises(LoraError, match="not JSON"):
        read_lora(tmp_path / "meta.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match="cannot be read"):
        read_lora(tmp_path / "junk.safetensors")
    (tmp_path / "style.pt").write_bytes(b"")
    with pytest.raises(LoraError, match="only .safetensors"):
        read_lora(tmp_path / "style.pt")
    with pytest.raises(LoraError, match="does not exist"):
        read_lora(tmp_path / "missing.safetensors")


def test_quantized_or_shared_weights_are_refused_with_what_to_do(lora_files):
    lora = read_lora(lora_files["sd1-unet"])
    merge = LoraMerge("unet", [lora], 1)
    with pytest.raises(LoraError, match=r"quantized \(int8\).*exported without quantization"):
        merge.targets({name: QUANTIZED for name in lora.layers["unet"]})
    # exporters merge identical initializers: a weight two modules use cannot take one module's delta
    modules = {"a.to_q": (4, 4), "a.to_k": (4, 4), "b.to_q": (4, 4)}
    shared_by({"a.to_q": ("w1",), "a.to_k": ("w1",), "b.to_q": ("w2",)}, modules)
    assert modules == {"a.to_q": "is shared with a.to_k", "a.to_k": "is shared with a.to_q", "b.to_q": (4, 4)}


def test_bf16_files_read_as_their_float32_values(tmp_path):
    """kohya often saves LoRAs in bf16, which numpy has no type for."""
    from safetensors.torch import save_file as save_torch

    down, up = torch.randn(2, 4), torch.randn(4, 2)
    save_torch({"lora_unet_a.lora_down.weight": down.bfloat16(), "lora_unet_a.lora_up.weight": up.bfloat16(),
                "lora_unet_a.alpha": torch.tensor(1.0, dtype=torch.bfloat16)}, tmp_path / "bf16.safetensors")
    layer = read_lora(tmp_path / "bf16.safetensors").layers["unet"]["a"]
    assert layer.down.dtype == np.float32 and np.array_equal(layer.down, down.bfloat16().float().numpy())
    assert np.array_equal(layer.up, up.bfloat16().float().numpy()) and layer.alpha == 1.0


def test_cli_lora_is_recorded_and_replay_says_when_it_differs(exported, lora_files, tmp_path):
    source = tmp_path / "in.png"
    test_image().save(source)
    out = tmp_path / "out.png"
    done = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--steps", "2", "--seed", "3",
                  "--backend", "onnxruntime", "--lora", f"{lora_files['sd1-both']}:0.7", "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert read_parameters(out)["loras"] == [{"file": "sd1-both.safetensors", "sha256": read_lora(lora_files["sd1-both"]).sha256,
                                              "weight": 0.7}]
    assert json.loads(done.stdout)["results"][0]["settings"]["loras"][0]["weight"] == 0.7
    replay = partial(edgesd, "img2img", exported["tiny-sd1"], "-i", source, "--replay", out, "-o")
    beside = tmp_path / "sd1-both.safetensors"
    shutil.copy(lora_files["sd1-unet"], beside)  # the recorded name, another file: not taken
    again = replay(tmp_path / "again.png")
    assert again.returncode == 0 and "LoRAs (sd1-both.safetensors:0.7 -> none; not found with the same sha256 here, " \
                                     "beside the image or beside the model folder: give them with --lora" in again.stderr
    shutil.copy(lora_files["sd1-both"], beside)  # the recorded file beside the image: found, at its recorded weight
    found = replay(tmp_path / "found.png")
    assert found.returncode == 0 and f"replay: using {beside} (named in out.png, the same sha256)" in found.stderr
    assert "LoRAs (" not in found.stderr
    same = edgesd("img2img", exported["tiny-sd1"], "-i", source, "--replay", out, "--lora", lora_files["sd1-both"],
                  "-o", tmp_path / "same.png")  # given without a weight: the recorded one
    assert same.returncode == 0 and "LoRA" not in same.stderr
    for made in ("found.png", "same.png"):
        assert np.array_equal(np.asarray(read_image(out)), np.asarray(read_image(tmp_path / made)))
    missing = edgesd("img2img", exported["tiny-sd1"], "-i", source, "-p", PROMPT, "--lora", tmp_path / "nope.safetensors:0.5")
    assert missing.returncode == 2 and "nope.safetensors does not exist" in missing.stderr


def read_image(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_bench_with_a_lora(exported, lora_files):
    done = edgesd("bench", exported["tiny-sd1"], "--backend", "onnxruntime", "--resolution", "64", "--steps", "2",
                  "--repeat", "1", "--warmup", "0", "--lora", f"{lora_files['sd1-unet']}:0.5")
    assert done.returncode == 0, done.stderr
    assert "LoRA sd1-unet.safetensors:0.5" in done.stdout


def test_replay_looks_up_recorded_names_only_as_plain_file_names(lora_files, tmp_path):
    """A shared image is untrusted: a recorded LoRA named by a path ("../x", "/x") is never hashed or read."""
    from edgesd.replay import recorded_loras

    shutil.copy(lora_files["sd1-both"], tmp_path / "x.safetensors")
    (tmp_path / "here").mkdir()
    digest = read_lora(tmp_path / "x.safetensors").sha256
    for name in ("../x.safetensors", str(tmp_path / "x.safetensors")):
        assert recorded_loras({"loras": [{"file": name, "sha256": digest, "weight": 0.5}]}, [tmp_path / "here"]) == []
    found = recorded_loras({"loras": [{"file": "x.safetensors", "sha256": digest, "weight": 0.5}]}, [tmp_path / "here", tmp_path])
    assert [(lora.path, lora.weight) for lora in found] == [(tmp_path / "x.safetensors", 0.5)]


def test_original_unet_names_map_as_diffusers_maps_them():
    """Against diffusers' own mapping for SD 1.5's UNet (layers_per_block 2): block renames
    (_maybe_map_sgm_blocks_to_diffusers), then inner names (_convert_unet_lora_key). Block indices up
    to 9: diffusers' prefix match takes input_blocks_10 for input_blocks_1 (a KeyError)."""
    from types import SimpleNamespace

    from diffusers.loaders.lora_conversion_utils import _convert_unet_lora_key, _maybe_map_sgm_blocks_to_diffusers

    from edgesd.lora import _from_original_unet

    names = ["input_blocks_1_0_in_layers_2", "input_blocks_2_0_emb_layers_1", "input_blocks_4_1_proj_in",
             "input_blocks_5_1_transformer_blocks_0_attn2_to_k", "input_blocks_7_0_skip_connection",
             "input_blocks_8_1_transformer_blocks_0_ff_net_2", "input_blocks_8_0_out_layers_3",
             "middle_block_0_in_layers_2", "middle_block_1_transformer_blocks_0_attn1_to_out_0", "middle_block_2_emb_layers_1",
             "output_blocks_0_0_skip_connection", "output_blocks_3_1_proj_out", "output_blocks_5_1_proj_in",
             "output_blocks_8_0_out_layers_3", "output_blocks_9_1_transformer_blocks_0_attn1_to_v"]
    state = {f"lora_unet_{name}.lora_down.weight": None for name in names}
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(state), SimpleNamespace(layers_per_block=2))
    # diffusers' older attention-processor spelling: attn1.processor.to_q_lora.down.weight, to_out_lora = to_out.0
    expected = [re.sub(r"[._]lora\.down\.weight$", "", _convert_unet_lora_key(key).replace(".processor", ""))
                for key in mapped]
    expected = [name + ".0" if name.endswith("to_out") else name for name in expected]
    ours_ = [_from_original_unet(name, 2)[0] for name in names]
    assert ours_ == [name.replace(".", "_") for name in expected]
    # where diffusers has no answer (its j=1 is always attentions), the model's own modules decide:
    assert _from_original_unet("input_blocks_3_0_op", 2) == ["down_blocks_0_downsamplers_0_conv"]
    assert _from_original_unet("output_blocks_2_1_conv", 2) == ["up_blocks_0_attentions_2_conv", "up_blocks_0_upsamplers_0_conv"]
    assert _from_original_unet("output_blocks_5_2_conv", 2) == ["up_blocks_1_upsamplers_0_conv"]
    assert _from_original_unet("input_blocks_0_0", 2) == ["conv_in"] and _from_original_unet("out_2", 2) == ["conv_out"]


def test_onnx_models_with_external_data(optimum_exported, lora_files, tmp_path):
    """Models over 2 GB keep their weights in model.onnx_data: the LoRA replaces them there."""
    import onnx

    folder = tmp_path / "external"
    shutil.copytree(optimum_exported["onnx"], folder)
    for submodel in ("text_encoder", "unet"):
        model = onnx.load(str(folder / submodel / "model.onnx"))
        onnx.save(model, str(folder / submodel / "model.onnx"), save_as_external_data=True, location="model.onnx_data")
    assert (folder / "unet" / "model.onnx_data").stat().st_size > (folder / "unet" / "model.onnx").stat().st_size
    loras = [(lora_files["sd1-both"], 0.9)]
    for a, b in zip(ours(folder, "onnxruntime", loras).images, ours(optimum_exported["onnx"], "onnxruntime", loras).images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
