"""`edgesd img2img` as users and apps drive it: outputs, replay, batches, and bad input ending in
one line on stderr, exit code 2, and nothing written."""

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesd import Img2ImgPipeline

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / "examples" / "input.png"


def edgesd(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)  # a hang fails, not stalls CI


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
    assert stored["model"] == Path(model).name and str(Path(model).parent) not in json.dumps(stored)  # no local paths
    replayed = tmp_path / "b.png"
    unnamed = edgesd("img2img", "-i", INPUT, "--replay", out, "-o", replayed)  # a local model is named again
    assert unnamed.returncode == 2 and "MODEL is required" in unnamed.stderr and Path(model).name in unnamed.stderr
    done = edgesd("img2img", model, "-i", INPUT, "--replay", out, "-o", replayed)
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
    other = edgesd("img2img", model, "-i", INPUT, "--replay", second, "--num-images", 1, "-o", tmp_path / "x.png")
    assert other.returncode == 2 and "drop --num-images" in other.stderr


def test_seed_per_image_makes_each_image_of_a_batch_with_its_own_seed(model, tmp_path):
    """A1111's rule (the server's): image i is one call with seed + i, so it is made again by that seed alone."""
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--seed", 3, "--num-images", 2, "--seed-per-image",
                  "-o", tmp_path / "s.png", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["settings"]["seed"] for r in json.loads(done.stdout)["results"]] == [3, 4]
    alone = tmp_path / "alone.png"
    assert edgesd("img2img", model, "-i", INPUT, "-p", "x", "--seed", 4, "-o", alone).returncode == 0
    assert np.array_equal(_pixels(tmp_path / "s-seed4.png"), _pixels(alone))
    twice = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--seed", "1,2", "--num-images", 2, "--seed-per-image",
                   "-o", tmp_path / "t.png")
    assert twice.returncode == 2 and "takes one --seed" in twice.stderr


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
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg.png", "c.webp.png"]
    assert [Path(f["image"]).name for f in result["failures"]] == ["broken.png"]
    (inputs / "broken.png").unlink()
    (out / "b.jpg.png").unlink()
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


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_stem_inputs_get_their_own_outputs(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "a.webp", "A.png", "b.png"):
        Image.open(ROOT / "tests/data/small.png").save(inputs / name)
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "clip.gif").write_bytes(b"GIF89a")
    out = tmp_path / "out"
    done = edgesd("img2img", model, "-i", inputs, "-p", "x", "--seed", 1, "-o", out)
    assert done.returncode == 0, done.stderr
    assert _files(out) == ["A.png", "a.jpg.png", "a.webp.png", "b.png"]  # each named by its own name
    assert done.stderr.count("wrote ") == 4
    assert f"skipped {inputs / 'notes.txt'}: not an image input" in done.stderr and "clip.gif" in done.stderr
    again = edgesd("img2img", model, "-i", inputs, "-p", "x", "--seed", 1, "-o", out, "--num-images", 2, "--json")
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout)["results"]) == 4  # each input now wants OUT-0, OUT-1
    before = {name: (out / name).read_bytes() for name in ("a.jpg.png", "b.png")}
    (out / "b-1.png").unlink()
    third = edgesd("img2img", model, "-i", inputs, "-p", "y", "--num-images", 2, "-o", out, "--json")
    skipped = {Path(s["image"]).name: s["reason"] for s in json.loads(third.stdout)["skipped"]}
    assert skipped["b.png"].startswith("1 of its 2 outputs exist") and "its output exists" in skipped["a.jpg"]
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing overwritten


def test_output_names_do_not_depend_on_other_inputs_and_earlier_names_are_found(model, tmp_path):
    """b.webp's output is b.webp.png whatever else the folder holds; one an earlier edgesd named b.png
    (by the stem) is found on resume, by the input it was made from, and not redone or orphaned."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.open(ROOT / "tests/data/small.png").save(inputs / "b.webp")
    run = partial(edgesd, "img2img", model, "-i", inputs, "-p", "x", "--steps", 2, "--seed", 1, "-o", out, "--json")
    assert run().returncode == 0 and _files(out) == ["b.webp.png"]
    (out / "b.webp.png").rename(out / "b.png")  # as edgesd 0.3 named it while its stem was the folder's only b
    Image.open(ROOT / "tests/data/small.png").convert("L").convert("RGB").save(inputs / "b.jpg")  # another b
    done = run()
    assert done.returncode == 0, done.stderr
    skipped = {Path(s["image"]).name: s["reason"] for s in json.loads(done.stdout)["skipped"]}
    assert skipped == {"b.webp": "its output exists as b.png (named by an earlier edgesd; --overwrite to redo it under "
                                 "its name now)"}
    assert _files(out) == ["b.jpg.png", "b.png"]  # b.png, made from b.webp, is not taken for b.jpg's


def test_json_is_printed_when_every_input_fails(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "x.png").write_bytes(b"\x89PNG garbage")
    (inputs / "y.jpg").write_bytes(b"\xff\xd8 garbage")
    done = edgesd("img2img", model, "-i", inputs, "-p", "x", "-o", tmp_path / "out", "--json")
    assert done.returncode == 1
    assert [Path(f["image"]).name for f in json.loads(done.stdout)["failures"]] == ["x.png", "y.jpg"]
    single = edgesd("img2img", model, "-i", inputs / "x.png", "-p", "x", "-o", tmp_path / "o.png", "--json")
    assert single.returncode == 2 and "cannot read image" in json.loads(single.stdout)["error"]


def test_inputs_above_the_native_area_run_at_it_unless_keep_size(exported, model, tmp_path):
    """The project's example (512x384) on tiny-sd1 (64 px native; at its own size onnxruntime would need
    ~29 GB, tests/test_memory.py) runs at about 64x64 pixels, aspect kept, said in one line; the API's
    call at that size gives the same pixels. --keep-size keeps an input's size; smaller inputs keep theirs."""
    out = tmp_path / "o.png"
    done = edgesd("img2img", exported["tiny-sd1"], "-i", INPUT, "-p", "x", "--steps", 2, "--seed", 3,
                  "--backend", "onnxruntime", "-o", out)
    assert done.returncode == 0, done.stderr
    width, height = Image.open(out).size
    assert width * height <= 64 * 64 and abs(width / height - 512 / 384) < 0.1
    assert "input.png (512x384) is resized to 74x55" in done.stderr and "--keep-size" in done.stderr
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime")
    made = pipe(Image.open(INPUT), "x", num_inference_steps=2, seed=3, size=(74, 55)).images[0]
    assert np.array_equal(np.asarray(made), _pixels(out))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(INPUT).save(inputs / "big.png")
    Image.open(INPUT).crop((0, 0, 120, 80)).save(inputs / "small.png")
    for flags, big in (((), (296, 216)), (("--keep-size",), (512, 384))):
        outputs = tmp_path / f"out{len(flags)}"
        assert edgesd("img2img", model, "-i", inputs, "-p", "x", "--steps", 2, "-o", outputs, *flags).returncode == 0
        assert Image.open(outputs / "big.png").size == big and Image.open(outputs / "small.png").size == (120, 80)


def test_sweep_writes_each_variation_and_a_grid_equal_to_single_runs(model, tmp_path):
    out = tmp_path / "v.png"
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--steps", 10, "--strength", "0.3,0.6", "--seed", "1,2",
                  "-o", out, "--grid", "--json")
    assert done.returncode == 0, done.stderr
    names = ["v-strength0.3-seed1.png", "v-strength0.3-seed2.png", "v-strength0.6-seed1.png", "v-strength0.6-seed2.png"]
    assert _files(tmp_path) == sorted([*names, "v-grid.png"])
    assert [r["settings"]["strength"] for r in json.loads(done.stdout)["results"]] == [0.3, 0.3, 0.6, 0.6]
    single = tmp_path / "single.png"
    assert edgesd("img2img", model, "-i", INPUT, "-p", "x", "--steps", 10, "--strength", 0.6, "--seed", 2, "-o", single).returncode == 0
    assert np.array_equal(_pixels(single), _pixels(tmp_path / "v-strength0.6-seed2.png"))  # reused encodings change nothing
    grid, cell = Image.open(tmp_path / "v-grid.png"), Image.open(single)
    assert grid.width >= 4 * cell.width and grid.height > cell.height


def test_sweep_edge_cases_fail_before_any_work(model, tmp_path):
    out = tmp_path / "v.png"
    (tmp_path / "v-grid.png").write_bytes(b"keep")
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--steps", 10, "--strength", "0.5,.5,0.7", "--grid", "-o", out)
    assert done.returncode == 2 and "v-grid.png already exists" in done.stderr
    assert _files(tmp_path) == ["v-grid.png"]  # checked before any image was made
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--steps", 10, "--strength", "0.5,.5,0.7", "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    assert [r["settings"]["strength"] for r in json.loads(done.stdout)["results"]] == [0.5, 0.7]  # repeats dropped


def test_iterations_without_a_seed_use_consecutive_seeds(model, tmp_path):
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--iterations", 3, "-o", tmp_path / "it.png", "--json")
    assert done.returncode == 0, done.stderr
    seeds = [r["seed"] for r in json.loads(done.stdout)["results"]]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]


def test_iterations_feed_each_output_back(model, tmp_path):
    done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "--seed", 4, "--iterations", 2, "-o", tmp_path / "it.png")
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path) == ["it-iter1.png", "it-iter2.png"]
    step = tmp_path / "step.png"
    assert edgesd("img2img", model, "-i", tmp_path / "it-iter1.png", "-p", "x", "--seed", 5, "-o", step).returncode == 0
    assert np.array_equal(_pixels(step), _pixels(tmp_path / "it-iter2.png"))


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_jpeg_and_webp_outputs_carry_parameters_that_replay(model, tmp_path, suffix):
    from edgesd.image import image_sha256, load_image
    from edgesd.outputs import read_parameters

    args = ["-i", INPUT, "-p", "hills", "--seed", 8, "--strength", 0.7]
    assert edgesd("img2img", model, *args, "-o", tmp_path / "a.png").returncode == 0
    assert edgesd("img2img", model, *args, "-o", tmp_path / f"a{suffix}").returncode == 0
    stored = read_parameters(tmp_path / f"a{suffix}")
    assert stored["prompt"] == "hills" and stored["seed"] == 8 and stored["backend"] in ("openvino", "onnxruntime")
    assert stored["inference_precision"] in ("bf16", "fp32") and stored["weights_precision"] == "fp32"  # what the engine used
    assert stored["input_sha256"] == image_sha256(load_image(INPUT))
    done = edgesd("img2img", model, "-i", INPUT, "--replay", tmp_path / f"a{suffix}", "-o", tmp_path / "b.png")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert np.array_equal(_pixels(tmp_path / "a.png"), _pixels(tmp_path / "b.png"))


def test_replay_warns_when_backend_or_input_differ(model, tmp_path):
    out = tmp_path / "a.png"
    assert edgesd("img2img", model, "-i", INPUT, "-p", "x", "--seed", 1, "--backend", "openvino", "-o", out).returncode == 0
    other = tmp_path / "other.png"
    Image.open(INPUT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    done = edgesd("img2img", model, "-i", other, "--replay", out, "--backend", "onnxruntime", "-o", tmp_path / "b.png")
    assert done.returncode == 0, done.stderr
    assert "backend (openvino -> onnxruntime)" in done.stderr and "input image (" in done.stderr


def test_quiet_prints_nothing_and_an_ignored_negative_prompt_is_said(model, tmp_path):
    args = ["img2img", model, "-i", INPUT, "-p", "x", "-n", "blur", "--guidance", 0]
    loud = edgesd(*args, "-o", tmp_path / "a.png")
    assert loud.returncode == 0 and "the negative prompt is ignored" in loud.stderr
    quiet = edgesd(*args, "-o", tmp_path / "b.png", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


@pytest.mark.parametrize("args,message", [
    (["--scheduler", "FooScheduler"], "FooScheduler"),
    (["--strength", 0.1], "increase strength"),
    (["-i", "/no/such/image.png"], "does not exist"),
])
def test_checked_before_the_model_loads(model, tmp_path, args, message):
    """The folder's UNet is damaged (found when loading): these errors must come first."""
    done = edgesd("img2img", _hash_mismatched(model, tmp_path), "-i", INPUT, "-p", "x", "-o", tmp_path / "o.png", *args)
    assert done.returncode == 2 and message in done.stderr and "sha256" not in done.stderr, done.stderr


def test_resize_options(model, tmp_path):
    for args, size in ((["--resize", "128x96"], (128, 96)), (["--width", 200], (200, 144)), (["--height", 100], (128, 96))):
        out = tmp_path / f"{args[0]}.png"
        done = edgesd("img2img", model, "-i", INPUT, "-p", "x", "-o", out, *args)
        assert done.returncode == 0, done.stderr
        assert Image.open(out).size == size  # 512x384 input; 200 wide keeps 4:3 -> 150, floored to 144
    bad = edgesd("img2img", model, "-i", INPUT, "-p", "x", "-o", tmp_path / "x.png", "--resize", "big")
    assert bad.returncode == 2 and "--resize takes WxH" in bad.stderr


def test_version_one_line_option_errors_and_help_at_80_columns():
    from edgesd import __version__

    assert edgesd("--version").stdout.strip() == f"edgesd {__version__}"
    done = edgesd("img2img", "--steps", "many")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    env = {**__import__("os").environ, "COLUMNS": "80"}
    for command in ("img2img", "export", "bench", "info"):
        shown = subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", command, "--help"],
                               capture_output=True, text=True, env=env)
        assert shown.returncode == 0 and max(map(len, shown.stdout.splitlines())) <= 80, shown.stdout


def test_info_says_mib_and_omits_unknown_revisions(model):
    done = edgesd("info", model)
    assert done.returncode == 0 and " MiB" in done.stdout and "MB " not in done.stdout
    assert "revision None" not in done.stdout and "input sizes: any multiple" in done.stdout
    assert "onnxruntime attention: fused" in done.stdout


def test_bench_defaults_to_the_models_native_size(exported):
    done = edgesd("bench", exported["tiny-sd1"], "--steps", 2, "--strength", 1, "--repeat", 1, "--warmup", 0)
    assert done.returncode == 0, done.stderr
    assert ", 64x64, " in done.stdout


def test_a_half_sdxl_folder_is_one_line(optimum_exported, tmp_path):
    """An optimum folder whose UNet is SDXL's (text_time) but lacks SDXL's second text encoder is
    refused, naming what is missing, before any engine sees it."""
    folder = tmp_path / "sdxl"
    shutil.copytree(optimum_exported["onnx"], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "addition_embed_type": "text_time"}))
    done = edgesd("img2img", folder, "-i", INPUT, "-p", "x", "-o", tmp_path / "o.png")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "text_encoder_2/ has neither model.onnx nor openvino_model.xml" in done.stderr


def test_inpaint_defaults_agree_with_the_api(model, tmp_path):
    """One step runs, as InpaintPipeline(...)(..., num_inference_steps=1) does: inpainting's strength is 1."""
    mask = tmp_path / "mask.png"
    Image.new("L", Image.open(INPUT).size, 255).save(mask)
    done = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "-p", "a", "--steps", 1, "-o", tmp_path / "o.png", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["settings"]["strength"] == 1.0


def test_inpaint_writes_replays_and_warns_on_another_mask(model, tmp_path):
    mask = tmp_path / "mask.png"
    m = np.zeros((384, 512), np.uint8)
    m[100:300, 150:400] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "in.png"
    done = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "-p", "a boat", "--seed", 2, "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)["results"][0]["settings"]
    assert stored["task"] == "inpaint" and stored["strength"] == 1.0 and len(stored["mask_sha256"]) == 64
    again = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "--replay", out, "-o", tmp_path / "again.png")
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert np.array_equal(_pixels(out), _pixels(tmp_path / "again.png"))
    Image.fromarray(255 - m).save(tmp_path / "other.png")
    other = edgesd("inpaint", model, "-i", INPUT, "--mask", tmp_path / "other.png", "--replay", out, "-o", tmp_path / "o.png")
    assert other.returncode == 0 and "mask (" in other.stderr
    missing = edgesd("inpaint", model, "-i", INPUT, "--mask", tmp_path / "none.png", "-p", "x", "-o", tmp_path / "n.png")
    assert missing.returncode == 2 and "none.png does not exist" in missing.stderr
    cropped = tmp_path / "crop.png"
    done = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "-p", "x", "--padding-mask-crop", 8, "-o", cropped, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["results"][0]["settings"]["padding_mask_crop"] == 8
    outside = m == 0  # pasted back over the original there
    assert np.array_equal(_pixels(cropped)[outside], np.asarray(Image.open(INPUT).convert("RGB"))[outside])
    noised = tmp_path / "noised.png"
    done = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "-p", "x", "--strength", 0.6, "--masked-content",
                  "latent-noise", "-o", noised, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["results"][0]["settings"]["masked_content"] == "latent noise"
    again = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "--replay", noised, "-o", tmp_path / "noised-again.png")
    assert again.returncode == 0 and np.array_equal(_pixels(noised), _pixels(tmp_path / "noised-again.png")), again.stderr
    wrong = edgesd("inpaint", model, "-i", INPUT, "--mask", mask, "-p", "x", "--masked-content", "noise", "-o", tmp_path / "w.png")
    assert wrong.returncode == 2 and "latent-noise" in wrong.stderr


def test_outpaint_writes_the_grown_canvas_and_replays(model, tmp_path):
    out = tmp_path / "wide.png"
    done = edgesd("outpaint", model, "-i", ROOT / "tests/data/small.png", "-p", "sky", "--left", 32, "--right", 20,
                  "--seed", 3, "-o", out)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (120, 48) and "right 20 -> 24" in done.stderr  # 64 + 32 + 24: multiples of 8
    again = edgesd("outpaint", model, "-i", ROOT / "tests/data/small.png", "--replay", out, "-o", tmp_path / "again.png")
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert np.array_equal(_pixels(out), _pixels(tmp_path / "again.png"))
    small = edgesd("outpaint", model, "-i", ROOT / "tests/data/small.png", "-p", "sky", "--left", 16, "--width", 48,
                   "--seed", 3, "-o", tmp_path / "small.png")  # the input resized first: its hash is of the file's pixels
    again = edgesd("outpaint", model, "-i", ROOT / "tests/data/small.png", "--replay", tmp_path / "small.png", "-o",
                   tmp_path / "small-again.png")
    assert small.returncode == 0 and again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert np.array_equal(_pixels(tmp_path / "small.png"), _pixels(tmp_path / "small-again.png"))
    nothing = edgesd("outpaint", model, "-i", ROOT / "tests/data/small.png", "-p", "sky", "-o", tmp_path / "none.png")
    assert nothing.returncode == 2 and "outpaint needs pixels to add" in nothing.stderr


def test_version_and_errors_load_nothing_heavy():
    """The package root imports lazily and the model folder below the engines' registry: `edgesd
    --version` and `from edgesd.errors import ...` load neither numpy nor an engine."""
    code = ("import sys; sys.argv = ['edgesd', '--version']\nfrom edgesd.errors import EdgesdError\n"
            "from edgesd.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'openvino', 'PIL', 'edgesd.pipelines') if m in sys.modules))")
    from edgesd import __version__

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines() == [f"edgesd {__version__}", "[]"], done.stderr
