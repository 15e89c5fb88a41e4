"""`edgesd export model.safetensors`: single-file checkpoints (written from the tests' random models by
tests/single_file.py, the original layout model sites share) export to the same model as their diffusers
folders: the same family, the same images by seed. Files that are not checkpoints are refused by name."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline
from edgesd.errors import EdgesdError

pytest.importorskip("torch")
from single_file import write_single_file  # noqa: E402

SMALL = Image.open(os.path.join(os.path.dirname(__file__), "data", "small.png"))


@pytest.fixture(scope="module")
def sources(diffusers_folders, sdxl) -> dict:
    """recipe -> (its diffusers folder, its edgesd export from that folder)."""
    return {**{name: (folder, None) for name, folder in diffusers_folders.items()},
            **{name: (folders["diffusers"], folders["exported"]) for name, folders in sdxl.items()}}


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sd2", "tiny-sdxl", "tiny-sdxl-refiner"])
def test_a_single_file_exports_as_its_folder_does(sources, exported, name, tmp_path):
    from edgesd.export import export_model

    folder, folder_export = sources[name]
    folder_export = folder_export or exported[name]
    file = write_single_file(folder, tmp_path / f"{name}.safetensors")
    single = export_model(str(file), tmp_path / "single", config=str(folder))
    manifest = json.loads((single / "edgesd.json").read_text())
    assert manifest["family"] == json.loads((folder_export / "edgesd.json").read_text())["family"]
    assert manifest["provenance"]["source"] == file.name  # a name, never the user's path
    images = [Img2ImgPipeline.load(f, backend="onnxruntime", inference_precision="fp32")(
        SMALL, "hills", seed=1, num_inference_steps=4, strength=0.6, guidance_scale=6.0).images[0] for f in (single, folder_export)]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_what_is_not_a_checkpoint_is_refused_by_name(sources, lora_files, tmp_path):
    from safetensors.torch import load_file, save_file

    from edgesd.export import export_model

    folder = sources["tiny-sd1"][0]
    checkpoint = write_single_file(folder, tmp_path / "model.safetensors")
    vae_alone = {k.removeprefix("first_stage_model."): v for k, v in load_file(checkpoint).items() if k.startswith("first_stage_model.")}
    save_file(vae_alone, tmp_path / "vae.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    (tmp_path / "junk.safetensors").write_text("not safetensors")
    cases = {str(lora_files["sd1-both"]): "is a LoRA, not a checkpoint: give it at run time with --lora",
             str(tmp_path / "vae.safetensors"): "is a VAE alone",
             str(tmp_path / "model.ckpt"): "is a pickled checkpoint, which can run code",
             str(tmp_path / "junk.safetensors"): "cannot be read as safetensors",
             str(tmp_path / "missing.safetensors"): "does not exist"}
    for source, message in cases.items():
        with pytest.raises(EdgesdError, match=message):
            export_model(source, tmp_path / "out", config=str(folder))
    with pytest.raises(EdgesdError, match="--config tiny-sdxl is an sdxl model .* model.safetensors is an sd1 checkpoint"):
        export_model(str(checkpoint), tmp_path / "out", config=str(sources["tiny-sdxl"][0]))
    with pytest.raises(EdgesdError, match="--config is for single-file checkpoints"):
        export_model("random:tiny-sd1", tmp_path / "out", config=str(folder))
    assert not (tmp_path / "out").exists()


def test_without_config_offline_says_to_pass_one(sources, tmp_path):
    """The layout diffusers infers (an SD 1.5 repo here) cannot be fetched offline: one line saying what to do."""
    file = write_single_file(sources["tiny-sd1"][0], tmp_path / "model.safetensors")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", "export", str(file), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "model.safetensors is an sd1 checkpoint whose layout" in last and "pass --config" in last
    assert not (tmp_path / "out").exists()
