"""Oversized work is refused with a one-line error, not killed: the estimate in edgesd.memory
against what onnxruntime really takes, and the refusal through the API and the CLI."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline, memory
from edgesd.errors import InvalidInputError
from edgesd.model_folder import open_model_folder

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import json, sys
import numpy as np
from PIL import Image
from edgesd import Img2ImgPipeline, memory
folder, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pipe = Img2ImgPipeline.load(folder, backend="onnxruntime", device="cpu", inference_precision="fp32")
pipe(Image.new("RGB", (8, 8)), "x", num_inference_steps=1, strength=1.0, guidance_scale=7)  # engines' own start-up
def status(key):  # VmHWM, unlike ru_maxrss, is not inherited across exec from the test runner
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
resident = status("VmRSS:")
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
pipe(image, "x", num_inference_steps=2, strength=1.0, guidance_scale=7)
grown = status("VmHWM:") - resident
print(json.dumps({"grown": grown, "estimate": memory.call_bytes(pipe.folder, width, height, 1, True, "onnxruntime")}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("layout", ["edgesd", "optimum"])
def test_estimate_covers_what_onnxruntime_takes_without_crying_wolf(layout, exported, optimum_exported):
    """tiny-sd1 at 160x120 with guidance: the UNet's 1200 tokens of 8-head attention at batch 2 and
    the VAE's 4800 tokens of 1 head, 92 MB of scores each. edgesd's export fuses the UNet's attention
    (onnxruntime keeps no score matrix there), optimum's does not: the estimate must follow both."""
    folder = exported["tiny-sd1"] if layout == "edgesd" else optimum_exported["onnx"]
    done = subprocess.run([sys.executable, "-c", MEASURE, folder, "160", "120"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    print(measured)
    assert measured["grown"] <= measured["estimate"] <= 2 * measured["grown"]


def test_estimate_grows_with_attention_not_only_pixels(exported):
    folder = open_model_folder(exported["tiny-sd1"])
    small, large = (memory.call_bytes(folder, side, side, 1, True, "onnxruntime") for side in (128, 256))
    assert large >= 15 * small  # tokens x4 -> scores x16
    assert memory.call_bytes(folder, 256, 256, 2, True, "onnxruntime") == 2 * large  # images in one batch
    assert memory.call_bytes(folder, 256, 256, 1, True, "openvino") < large / 50  # fused attention
    # the UNet's score matrices count only where its attention is not fused (older exports, optimum's)
    assert folder.manifest["onnx_attention_fused"]
    unfused = dataclasses.replace(folder, manifest={**folder.manifest, "onnx_attention_fused": False})
    unet, vae, _, _ = memory._terms(folder, 256, 256, 1, True, "onnxruntime", False)
    assert unet == 0 and vae > 0 and memory._terms(unfused, 256, 256, 1, True, "onnxruntime", False)[0] > 0


def test_api_refuses_what_will_not_fit(exported, monkeypatch, caplog):
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", device="cpu", inference_precision="fp32")
    monkeypatch.setattr(memory, "available_bytes", lambda: 200 * 2**20)
    image = Image.fromarray(np.zeros((192, 256, 3), np.uint8))
    with pytest.raises(InvalidInputError, match=r"needs about .* GiB of memory .* make it smaller \(size=\(width, height\)\)") as refused:
        pipe(image, "x", num_inference_steps=2, strength=1.0, guidance_scale=7)
    assert "fewer num_images" not in str(refused.value)  # only what applies is suggested
    assert "--" not in str(refused.value).replace("EDGESD_MEMORY_CHECK", "") and "--resize WxH" in refused.value.cli  # API words
    assert "256x192 is 12x the pixels of this model's native 64x64" in caplog.text
    assert pipe(image, "x", num_inference_steps=2, strength=1.0, guidance_scale=7, size=(64, 48)).images[0].size == (64, 48)


def test_cli_refuses_an_oversized_input_in_one_line_before_loading(exported, tmp_path):
    """tiny-sd1 (64 px native) at 512x384: the VAE's 49,152-token attention; onnxruntime would take ~29 GB."""
    if (memory.available_bytes() or 0) > 30 * 2**30:
        pytest.skip("this machine would fit the 29 GB call")
    out = tmp_path / "o.png"
    done = subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", "img2img", exported["tiny-sd1"],
                           "-i", ROOT / "examples/input.png", "-p", "x", "--backend", "onnxruntime", "--keep-size", "-o", out],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: input.png at 512x384 on onnxruntime needs about")
    assert done.stderr.count("\n") == 1 and "--resize" in done.stderr and not out.exists()
    # tiny-sd1's VAE factor is 2: its mid-block attention over 49,152 latent tokens dominates, which
    # tiling the VAE and OpenVINO's fused attention both avoid
    assert "--low-memory" in done.stderr and "--backend openvino" in done.stderr


def test_a_refusal_for_weights_that_do_not_fit_names_low_memory_and_int8(exported, quantized_unet_folder, monkeypatch):
    """When the weights still to load are most of the need (SDXL's 10 GB fp32 UNet on a small machine),
    the refusal offers loading one submodel at a time and an int8 export, not only a smaller image."""
    folder = open_model_folder(exported["tiny-sd1"])
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    with pytest.raises(InvalidInputError) as refused:
        memory.check_call(folder, 64, 64, 1, True, "openvino", False, 2**30, "x")
    assert "--low-memory" in refused.value.cli and "edgesd export SOURCE --target cpu" in refused.value.cli
    assert "load it with low_memory=True" in str(refused.value)
    with pytest.raises(InvalidInputError) as refused:
        memory.check_call(quantized_unet_folder, 64, 64, 1, True, "openvino", True, 2**30, "x")
    assert "--low-memory" not in refused.value.cli and "int8" not in refused.value.cli
    with pytest.raises(InvalidInputError) as refused:  # the image, not the weights: no int8 advice
        memory.check_call(folder, 256, 256, 1, True, "onnxruntime", False, 0, "x")
    assert "--target cpu" not in str(refused.value)


@pytest.fixture
def quantized_unet_folder(exported):
    """tiny-sd1's folder as an int8 export describes its UNet (only the manifest is read here)."""
    folder = open_model_folder(exported["tiny-sd1"])
    submodels = {**folder.manifest["submodels"]}
    submodels["unet"] = {**submodels["unet"], "formats": {fmt: {**spec, "precision": "int8"}
                                                          for fmt, spec in submodels["unet"]["formats"].items()}}
    return dataclasses.replace(folder, manifest={**folder.manifest, "submodels": submodels})
