"""`edgesd img2img` as users and apps drive it: outputs, replay, batches, and bad input ending in
one line on stderr, exit code 2, and nothing written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / "examples" / "input.png"


def edgesd(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported["tiny-sd2"]


def test_writes_png_with_parameters_and_replays_it(model, tmp_path):
    out = tmp_path / "a.png"
    done = edgesd("img2img", model, "-i", INPUT, "-p", "hills at dusk", "--seed", 5, "--strength", 0.6, "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == [str(out)]
    stored = json.loads(Image.open(out).text["edgesd"])
    assert stored["prompt"] == "hills at dusk" and stored["seed"] == 5 and stored["strength"] == 0.6
    assert stored["num_inference_steps"] == 2 and stored["scheduler"] == "EulerDiscreteScheduler"
    assert len(stored["manifest_sha256"]) == 64 and stored["edgesd_version"]
    replayed = tmp_path / "b.png"
    done = edgesd("img2img", "-i", INPUT, "--replay", out, "-o", replayed)  # the model is stored too
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(replayed)))


def test_replay_of_one_image_of_a_batch(model, tmp_path):
    out = tmp_path / "n.png"
    assert edgesd("img2img", model, "-i", INPUT, "-p", "x", "--seed", 3, "--num-images", 2, "-o", out).returncode == 0
    second = tmp_path / "n-1.png"
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "n-0.png")), np.asarray(Image.open(second)))
    again = tmp_path / "again.png"
    assert edgesd("img2img", model, "-i", INPUT, "--replay", second, "-o", again).returncode == 0
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(again)))


def test_existing_output_is_not_overwritten(model, tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "-o", out)
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert out.read_bytes() == b"precious"
    assert edgesd("img2img", model, "-i", INPUT, "-p", "x", "-o", out, "--overwrite").returncode == 0
    assert out.read_bytes() != b"precious"


def test_batch_is_resumable_and_reports_failures(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.jpg", "c.webp"):
        Image.open(INPUT).convert("RGB").save(inputs / name)
    (inputs / "broken.png").write_bytes(b"\x89PNG garbage")
    (inputs / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    done = edgesd("img2img", model, "-i", inputs, "-p", "x", "--seed", 1, "-o", out, "--json")
    assert done.returncode == 1  # one input failed, the others were written
    result = json.loads(done.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert [Path(f["image"]).name for f in result["failures"]] == ["broken.png"]
    (inputs / "broken.png").unlink()
    (out / "b.png").unlink()
    done = edgesd("img2img", model, "-i", inputs, "-p", "x", "--seed", 1, "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [Path(r["image"]).name for r in result["results"]] == ["b.jpg"]
    assert sorted(Path(s["image"]).name for s in result["skipped"]) == ["a.png", "c.webp", "notes.txt"]


def test_low_memory_gives_the_same_image(model, tmp_path):
    """Within the VAE's native size (256 px for tiny-sd2) nothing is tiled, so nothing changes; larger
    images are tiled as diffusers' enable_vae_tiling (tests/test_pipeline_parity.py)."""
    small = tmp_path / "small.png"
    Image.open(INPUT).crop((0, 0, 256, 192)).save(small)
    for name, extra in (("normal.png", []), ("low.png", ["--low-memory"])):
        assert edgesd("img2img", model, "-i", small, "-p", "x", "--seed", 2, "-o", tmp_path / name, *extra).returncode == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "normal.png")), np.asarray(Image.open(tmp_path / "low.png")))


def _half_exported(model: Path, tmp: Path) -> Path:
    folder = tmp / "half"
    shutil.copytree(model, folder)
    shutil.rmtree(folder / "unet")
    return folder


def _newer_format(model: Path, tmp: Path) -> Path:
    folder = tmp / "newer"
    shutil.copytree(model, folder)
    manifest = json.loads((folder / "edgesd.json").read_text())
    (folder / "edgesd.json").write_text(json.dumps({**manifest, "format_version": 99}))
    return folder


def _truncated_weights(model: Path, tmp: Path) -> Path:
    folder = tmp / "truncated"
    shutil.copytree(model, folder)
    data = folder / "unet" / "model.onnx"
    data.write_bytes(data.read_bytes()[:1000])
    return folder


BAD = {
    "missing image": (lambda m, t: ["-i", t / "nope.png"], "does not exist"),
    "not an image": (lambda m, t: ["-i", ROOT / "README.md"], "cannot read image"),
    "oversized image": (lambda m, t: ["--max-pixels", 100_000], "over the limit of 100000 pixels"),
    "strength > 1": (lambda m, t: ["--strength", 1.5], "strength"),
    "steps < 1": (lambda m, t: ["--steps", 0], "steps"),
    "unknown scheduler": (lambda m, t: ["--scheduler", "FooScheduler"], "FooScheduler"),
    "unknown backend": (lambda m, t: ["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    "unknown device": (lambda m, t: ["--device", "tpu"], "unknown device 'tpu'"),
    "strength too small for steps": (lambda m, t: ["--strength", 0.1, "--steps", 2], "increase strength"),
}
def _hash_mismatched(model: Path, tmp: Path) -> Path:
    folder = tmp / "flipped"
    shutil.copytree(model, folder)
    for weights in (folder / "unet" / "model.onnx", folder / "unet" / "openvino_model.bin"):
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # same size, one bit pattern changed
        weights.write_bytes(bytes(data))
    return folder


BAD_MODELS = {
    "hash mismatch": (_hash_mismatched, "sha256 mismatch"),
    "missing folder": (lambda m, t: t / "nothing", "does not exist"),
    "half-exported": (_half_exported, "unet"),
    "newer format": (_newer_format, "upgrade edgesd"),
    "truncated weights": (_truncated_weights, "bytes, expected"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_options_fail_cleanly(model, tmp_path, case):
    make_args, message = BAD[case]
    args = ["-i", INPUT, "-p", "x", "-o", tmp_path / "o.png", *make_args(model, tmp_path)]
    done = edgesd("img2img", model, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_folders_fail_cleanly(model, tmp_path, case):
    make_folder, message = BAD_MODELS[case]
    done = edgesd("img2img", make_folder(model, tmp_path), "-i", INPUT, "-p", "x", "-o", tmp_path / "o.png")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.png").exists()


def test_help_explains_every_option():
    done = edgesd("img2img", "--help")
    assert done.returncode == 0
    for option in ("--image", "--prompt", "--strength", "--steps", "--guidance", "--seed", "--scheduler", "--num-images",
                   "--backend", "--device", "--precision", "--replay", "--low-memory", "--overwrite", "--json", "--quiet"):
        assert option in done.stdout
