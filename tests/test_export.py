"""edgesd export: model folder contents, validation, atomic writes, refusals, `edgesd info`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgesd.errors import EdgesdError, ModelFolderError
from edgesd.model_folder import open_model_folder

# A diffusers folder from configs the recipes do not use: 3-level VAE (scale factor 4, not 8),
# wider attention heads, scaled-linear DDIM scheduler, sample prediction.
UNSEEN = {
    "unet": dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, cross_attention_dim=24,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=4, norm_num_groups=8),
    "vae": dict(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=0.5),
    "text_encoder": dict(hidden_size=24, intermediate_size=40, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
}


def edgesd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", *args],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def unseen_folder(tmp_path_factory) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from edgesd.export.tokenizer import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("unseen") / "diffusers"
    torch.manual_seed(3)
    StableDiffusionImg2ImgPipeline(
        vae=AutoencoderKL(**UNSEEN["vae"]), unet=UNet2DConditionModel(**UNSEEN["unet"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**UNSEEN["text_encoder"])),
        tokenizer=write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>"),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", prediction_type="sample"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_unseen_folder_exports_and_verifies(unseen_folder, tmp_path, fmt):
    out = tmp_path / f"model-{fmt}"
    done = edgesd("export", str(unseen_folder), "-o", str(out), "--format", fmt)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "edgesd.json").read_text())
    assert manifest["vae_scale_factor"] == 4 and manifest["vae_scaling_factor"] == 0.5
    assert manifest["prediction_type"] == "sample" and manifest["sample_size"] == 64
    for name, entry in manifest["submodels"].items():
        assert list(entry["formats"]) == [fmt]
        assert all(len(f["sha256"]) == 64 for f in entry["formats"][fmt]["files"].values())
        backend = {"onnx": "onnxruntime"}.get(fmt, fmt)
        assert entry["validation_max_abs_deviation"][backend] < 1e-3, name
    other = {"onnx": "openvino_model.xml", "openvino": "model.onnx"}[fmt]
    assert not list(out.glob(f"*/{other}"))
    assert (out / "tokenizer" / "tokenizer.json").exists()
    assert all(f.stat().st_mode & 0o044 for f in out.rglob("*") if f.is_file())  # readable by others
    info = edgesd("info", str(out), "--verify")
    assert info.returncode == 0, info.stderr
    assert "verified" in info.stdout and "unet" in info.stdout


def test_verify_catches_a_changed_and_a_missing_file(exported, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported["tiny-sd1"], folder)
    with open(folder / "unet" / "openvino_model.bin", "r+b") as f:  # same size, different bytes
        f.write(b"\0" * 16)
    done = edgesd("info", str(folder), "--verify")
    assert done.returncode == 2 and "sha256 mismatch" in done.stderr and "Traceback" not in done.stderr
    (folder / "vae_decoder" / "model.onnx").unlink()
    with pytest.raises(ModelFolderError, match="vae_decoder/model.onnx: missing"):
        open_model_folder(folder)


def test_manifest_of_a_recipe_model(exported):
    manifest = open_model_folder(exported["tiny-sd2"]).manifest
    assert manifest["family"] == "sd2" and manifest["prediction_type"] == "v_prediction"
    assert manifest["defaults"] == {"num_inference_steps": 2, "guidance_scale": 0.0, "strength": 0.5}
    assert manifest["provenance"]["packages"]["torch"].startswith("2.")


def test_failed_export_leaves_nothing_and_existing_output_is_kept(unseen_folder, tmp_path):
    from edgesd.export import export_model

    broken = tmp_path / "broken"
    shutil.copytree(unseen_folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception):
        export_model(str(broken), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    (tmp_path / "existing").mkdir()
    with pytest.raises(EdgesdError, match="--overwrite"):
        export_model(str(unseen_folder), tmp_path / "existing")


def test_missing_text_encoder_keys_are_refused(unseen_folder, tmp_path):
    """A checkpoint without the `text_model.` prefix would load as random weights: refuse it."""
    from safetensors.torch import load_file, save_file

    from edgesd.export.load import load_pipeline

    folder = tmp_path / "unprefixed"
    shutil.copytree(unseen_folder, folder)
    weights = folder / "text_encoder" / "model.safetensors"
    save_file({k.removeprefix("text_model."): v for k, v in load_file(weights).items()}, weights)
    with pytest.raises(ModelFolderError, match="weights missing"):
        load_pipeline(folder)


def test_cli_errors_are_one_line(tmp_path):
    done = edgesd("export", "random:no-such-recipe", "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and done.stderr.startswith("error: unknown recipe") and done.stderr.count("\n") == 1
    done = edgesd("info", str(tmp_path / "missing"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_onnx_unet_attention_is_fused_with_its_projections_kept(exported):
    """onnxruntime's MultiHeadAttention replaces MatMul -> Softmax -> MatMul in every transformer
    block (self and cross), the q/k/v projections stay separate MatMuls named after their modules
    (LoRAs find them), and the OpenVINO IR, converted before the fusion, keeps plain operators. That
    the fused graph computes what diffusers does is test_pipeline_parity's job (it runs this folder)."""
    onnx = pytest.importorskip("onnx")
    folder = exported["tiny-sd1"]
    graph = onnx.load(str(folder / "unet" / "model.onnx"), load_external_data=False).graph
    fused = [node for node in graph.node if node.op_type == "MultiHeadAttention"]
    self_attention = [node for node in graph.node if node.op_type == "MatMul" and "/attn1/to_q/" in node.name]
    assert self_attention and len(fused) == 2 * len(self_attention)  # attn1 and attn2 of every block
    assert all(node.domain == "com.microsoft" for node in fused)
    assert not any(node.op_type == "Softmax" for node in graph.node)
    for projection in ("to_q", "to_k", "to_v"):
        names = [node.name for node in graph.node if node.op_type == "MatMul" and f"/{projection}/" in node.name]
        assert len(names) == len(fused), projection
    assert json.loads((folder / "edgesd.json").read_text())["onnx_attention_fused"] is True
    if (folder / "unet" / "openvino_model.xml").exists():
        assert "MultiHeadAttention" not in (folder / "unet" / "openvino_model.xml").read_text()
