"""Shared fixtures: tiny random-weight diffusers models, built once per session and exported."""

import logging
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def diffusers_folders(tmp_path_factory) -> dict[str, Path]:
    """recipe name -> a diffusers folder saved as released repos are."""
    pytest.importorskip("torch")  # the export side: tests needing it skip where torch is absent
    from edgesd.export import recipes
    from edgesd.export.random_model import build_random_pipeline

    root = tmp_path_factory.mktemp("diffusers")
    folders = {}
    for name in ("tiny-sd1", "tiny-sd2"):
        build_random_pipeline(recipes.load(name), root / name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def exported(diffusers_folders, tmp_path_factory) -> dict[str, Path]:
    """recipe name -> an edgesd model folder with both ONNX and OpenVINO IR, exported from
    `random:NAME` (same seed, so the same weights as `diffusers_folders[NAME]`)."""
    from edgesd.export import export_model

    root = tmp_path_factory.mktemp("exported")
    logging.getLogger("edgesd").setLevel(logging.WARNING)
    return {
        name: export_model(f"random:{name}", root / name, formats=("onnx", "openvino"))
        for name in diffusers_folders
    }


@pytest.fixture(scope="session")
def optimum_exported(diffusers_folders, tmp_path_factory) -> dict[str, Path]:
    """format -> tiny-sd1 as `optimum-cli export onnx|openvino` writes it (no edgesd.json, no
    tokenizer.json: the tokenizer is vocab.json + merges.txt), the layout users already have."""
    from optimum.exporters.onnx import main_export as export_onnx
    from optimum.exporters.openvino import main_export as export_openvino

    root = tmp_path_factory.mktemp("optimum")
    source = diffusers_folders["tiny-sd1"]
    export_onnx(str(source), root / "onnx", task="image-to-image", do_validation=False)
    export_openvino(str(source), root / "openvino", task="image-to-image")
    for folder in (root / "onnx", root / "openvino"):
        assert not (folder / "tokenizer" / "tokenizer.json").exists() and (folder / "tokenizer" / "merges.txt").exists()
    return {"onnx": root / "onnx", "openvino": root / "openvino"}


# LoRA layers the tests train nothing into but draw at random (peft's init_lora_weights=False): UNet
# attention, feed-forward, 1x1 projections, time embeddings and 3x3 resnet convolutions; CLIP's
# attention and MLP. alpha != rank throughout, so a wrong alpha/rank scale shows.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                "time_emb_proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def random_lora_layers(model, targets: list[str], rank: int, alpha: float, seed: int):
    """(peft state dict of new LoRA layers added to `model`, their LoraConfig)."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(seed)
    model.add_adapter(config)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}, config


def as_kohya(layers: dict, alphas: dict[str, float], text_prefix: str = "lora_te_") -> dict:
    """diffusers' own conversion of prefixed peft layers to kohya's names, with the given alphas
    (it writes alpha = rank) and A1111's `lora_te_` for SD1's text encoder."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = {}
    for key, value in convert_state_dict_to_kohya(layers).items():
        key = key.replace("lora_te1_", text_prefix)
        if key.endswith(".alpha"):
            value = torch.tensor(alphas["unet" if key.startswith("lora_unet_") else "text_encoder"])
        kohya[key] = value
    return kohya


@pytest.fixture(scope="session")
def lora_files(diffusers_folders, tmp_path_factory) -> dict[str, Path]:
    """name -> a random LoRA file for tiny-sd1 (or tiny-sd2 where named), as people have them:
    diffusers' format (save_lora_weights, alpha in its metadata) and kohya's (convert_state_dict_to_kohya)."""
    import diffusers
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("loras")
    files = {}
    for model in ("tiny-sd1", "tiny-sd2"):
        for content, seed in [("both", 1), ("unet", 2), ("text", 3)]:
            pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(diffusers_folders[model], safety_checker=None,
                                                                            requires_safety_checker=False)
            unet, unet_config = random_lora_layers(pipe.unet, UNET_TARGETS, 4, 8.0, seed)
            text, text_config = random_lora_layers(pipe.text_encoder, TEXT_TARGETS, 2, 1.0, seed + 100)
            layers = {"unet": unet if content != "text" else None, "text_encoder": text if content != "unet" else None}
            name = f"{model.removeprefix('tiny-')}-{content}"
            out = root / name
            diffusers.StableDiffusionPipeline.save_lora_weights(
                out, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
                unet_lora_adapter_metadata=unet_config.to_dict() if layers["unet"] else None,
                text_encoder_lora_adapter_metadata=text_config.to_dict() if layers["text_encoder"] else None)
            files[name] = (out / "pytorch_lora_weights.safetensors").rename(root / f"{name}.safetensors")
            if model == "tiny-sd1" and content == "both":
                prefixed = {f"{sub}.{k}": v for sub, part in layers.items() for k, v in part.items()}
                save_file(as_kohya(prefixed, {"unet": 8.0, "text_encoder": 1.0}), root / "sd1-both-kohya.safetensors")
                files["sd1-both-kohya"] = root / "sd1-both-kohya.safetensors"
                # diffusers 0.39 reads the original UNet names for SDXL only: the reference for them
                # is the same layers under diffusers' names (sd1-unet-kohya)
                unet_only = as_kohya({k: v for k, v in prefixed.items() if k.startswith("unet.")}, {"unet": 8.0})
                for name, tensors in (("sd1-unet-kohya", unet_only), ("sd1-unet-original-names", original_unet_names(unet_only))):
                    save_file(tensors, root / f"{name}.safetensors")
                    files[name] = root / f"{name}.safetensors"
    return files


def original_unet_names(kohya: dict) -> dict:
    """kohya names in the original SD UNet's block naming (input_blocks_N_M ...), as older LoRAs for
    SD 1.x have them; for tiny-sd1's blocks (layers_per_block 1: down 0 plain, down 1 cross-attention;
    up 0 cross-attention, up 1 plain)."""
    blocks = {"down_blocks_0_resnets_0": "input_blocks_1_0", "down_blocks_0_downsamplers_0_conv": "input_blocks_2_0_op",
              "down_blocks_1_resnets_0": "input_blocks_3_0", "down_blocks_1_attentions_0": "input_blocks_3_1",
              "mid_block_resnets_0": "middle_block_0", "mid_block_attentions_0": "middle_block_1",
              "mid_block_resnets_1": "middle_block_2", "up_blocks_0_resnets_0": "output_blocks_0_0",
              "up_blocks_0_attentions_0": "output_blocks_0_1", "up_blocks_0_resnets_1": "output_blocks_1_0",
              "up_blocks_0_attentions_1": "output_blocks_1_1", "up_blocks_1_resnets_0": "output_blocks_2_0",
              "up_blocks_1_resnets_1": "output_blocks_3_0"}
    inner = {"_conv1": "_in_layers_2", "_conv2": "_out_layers_3", "_time_emb_proj": "_emb_layers_1"}
    renamed = {}
    for key, value in kohya.items():
        for new, old in blocks.items():
            if key.startswith(f"lora_unet_{new}_"):
                key = key.replace(f"lora_unet_{new}", f"lora_unet_{old}")
                for diffusers_name, original in inner.items():
                    key = key.replace(f"{old}{diffusers_name}.", f"{old}{original}.")
                break
        renamed[key] = value
    assert not any("blocks_0_resnets" in k or "attentions" in k for k in renamed), "a name was left in diffusers' naming"
    return renamed


def random_component(tmp_path_factory, recipe: str, build: str, name: str | None = None) -> tuple[Path, Path]:
    """A random component built by edgesd.export.random_model's `build` from `recipe`: its source folder
    and its edgesd folder `name` (default: the recipe's; both formats), the same weights."""
    pytest.importorskip("torch")
    from edgesd.export import export_model, random_model, recipes

    root = tmp_path_factory.mktemp(recipe)
    getattr(random_model, build)(recipes.load(recipe), root / "source")
    return root / "source", export_model(f"random:{recipe}", root / (name or recipe), formats=("onnx", "openvino"))


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> dict[str, Path]:
    """A random tiny VAE (AutoencoderTiny, recipe tiny-taesd, fits tiny-sd1): its diffusers folder
    and its edgesd VAE folder (both formats), the same weights."""
    source, exported = random_component(tmp_path_factory, "tiny-taesd", "build_random_tiny_vae", "taesd")
    return {"diffusers": source, "exported": exported}


@pytest.fixture(scope="session")
def inpainting_model(tmp_path_factory) -> tuple[Path, Path]:
    """The 9-channel inpainting model (recipe tiny-sd1-inpaint: mask and masked-image latents beside the
    latents): its diffusers folder and its edgesd folder (both formats)."""
    pytest.importorskip("torch")
    from edgesd.export import export_model, recipes
    from edgesd.export.random_model import build_random_pipeline

    root = tmp_path_factory.mktemp("inpaint")
    build_random_pipeline(recipes.load("tiny-sd1-inpaint"), root / "diffusers")
    logging.getLogger("edgesd").setLevel(logging.WARNING)
    return root / "diffusers", export_model("random:tiny-sd1-inpaint", root / "edgesd", formats=("onnx", "openvino"))


@pytest.fixture(scope="session")
def controlnets(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """recipe -> (its diffusers folder, its edgesd ControlNet folder with both formats), the same weights:
    tiny-controlnet-sd1, a second one reading BGR, tiny-controlnet-sd2 and tiny-controlnet-sdxl."""
    pytest.importorskip("torch")
    from edgesd.export import export_model, recipes
    from edgesd.export.random_model import build_random_controlnet

    root = tmp_path_factory.mktemp("controlnets")
    logging.getLogger("edgesd").setLevel(logging.WARNING)
    folders = {}
    for name in ("tiny-controlnet-sd1", "tiny-controlnet-sd1-bgr", "tiny-controlnet-sd2", "tiny-controlnet-sdxl"):
        build_random_controlnet(recipes.load(name), root / name)
        folders[name] = (root / name, export_model(f"random:{name}", root / f"{name}-exported", formats=("onnx", "openvino")))
    return folders


@pytest.fixture(scope="session")
def depth_estimator(tmp_path_factory) -> tuple[Path, Path]:
    """A random DPT depth estimator (recipe tiny-dpt) with its image processor: its transformers folder and
    its edgesd depth estimator folder (both formats), the same weights."""
    return random_component(tmp_path_factory, "tiny-dpt", "build_random_depth_estimator")


@pytest.fixture(scope="session")
def sdxl(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """recipe -> {"diffusers": its diffusers folder, "exported": an edgesd folder (both formats)} for the
    SDXL layouts: tiny-sdxl (two text encoders of different widths) and tiny-sdxl-refiner."""
    pytest.importorskip("torch")
    from edgesd.export import export_model, recipes
    from edgesd.export.random_model import build_random_pipeline

    root = tmp_path_factory.mktemp("sdxl")
    logging.getLogger("edgesd").setLevel(logging.WARNING)
    folders = {}
    for name in ("tiny-sdxl", "tiny-sdxl-refiner"):
        build_random_pipeline(recipes.load(name), root / name)
        folders[name] = {"diffusers": root / name,
                         "exported": export_model(f"random:{name}", root / f"{name}-exported", formats=("onnx", "openvino"))}
    return folders


@pytest.fixture(scope="session")
def sdxl_loras(sdxl, tmp_path_factory) -> dict[str, Path]:
    """Random LoRAs for tiny-sdxl on its UNet (also the pooled/time-id embedding) and both text encoders:
    diffusers' format (save_lora_weights) and kohya's (lora_te1_/lora_te2_, the original UNet's block
    names incl. label_emb), the same layers."""
    import diffusers
    from safetensors.torch import save_file

    from edgesd.export.load import load_pipeline

    root = tmp_path_factory.mktemp("sdxl-loras")
    pipe = load_pipeline(sdxl["tiny-sdxl"]["diffusers"])
    unet, unet_config = random_lora_layers(pipe.unet, [*UNET_TARGETS, "linear_1", "linear_2"], 4, 8.0, 11)
    text, text_config = random_lora_layers(pipe.text_encoder, TEXT_TARGETS, 2, 1.0, 12)
    text_2, text_2_config = random_lora_layers(pipe.text_encoder_2, TEXT_TARGETS, 2, 1.0, 13)
    diffusers.StableDiffusionXLPipeline.save_lora_weights(
        root / "both", unet_lora_layers=unet, text_encoder_lora_layers=text, text_encoder_2_lora_layers=text_2,
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict(),
        text_encoder_2_lora_adapter_metadata=text_2_config.to_dict())
    files = {"sdxl-both": (root / "both" / "pytorch_lora_weights.safetensors").rename(root / "sdxl-both.safetensors")}
    prefixed = {f"{sub}.{k}": v for sub, part in (("unet", unet), ("text_encoder", text), ("text_encoder_2", text_2))
                for k, v in part.items()}
    kohya = as_kohya(prefixed, {"unet": 8.0, "text_encoder": 1.0}, text_prefix="lora_te1_")
    labels = {"add_embedding_linear_1": "label_emb_0_0", "add_embedding_linear_2": "label_emb_0_2"}
    kohya = {next((k.replace(d, o) for d, o in labels.items() if d in k), k): v for k, v in original_unet_names(kohya).items()}
    assert any("label_emb_0_0" in k for k in kohya) and any(k.startswith("lora_te2_") for k in kohya)
    save_file(kohya, root / "sdxl-both-kohya.safetensors")
    files["sdxl-both-kohya"] = root / "sdxl-both-kohya.safetensors"
    return files
