"""The runtime installed from a built wheel into venvs without torch, diffusers or transformers:
`import edgesd` and `edgesd img2img` work there, on edgesd's and optimum's folder layouts, and torch
is provably absent. Two venvs keep pyproject.toml's `>=` a tested promise at both ends:
- newest: what README.md's install line for a wheel resolves today (no pins);
- lowest: every direct runtime dependency at the lowest version pyproject.toml allows."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_EXTRAS = ("openvino", "control", "ray")  # what a runtime user adds (an engine, OpenCV, Ray); export/dev/gpu are not the runtime


def lowest_requirements() -> list[str]:
    """`name>=X[,<Y]` -> `name==X` for the runtime's dependencies and its engine extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in RUNTIME_EXTRAS for r in project["optional-dependencies"][extra]]
    pinned = []
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+(?:\[[a-z,]+\])?)>=([^,;\s]+)(,<[^;\s]+)?", requirement)
        assert match, f"runtime dependency {requirement!r} has no lower bound to test"
        pinned.append(f"{match[1]}=={match[2]}")
    return pinned


def readme_install(start: str, dist: Path) -> list[str]:
    """README.md's install line that begins with `start`, as pip arguments, its `dist/` put at `dist`:
    the suite installs the way a user who pastes it does."""
    block = re.search(r"^## Install\n.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S | re.M)[1]
    line = next(line for line in block.splitlines() if line.startswith(start))
    words = shlex.split(line.partition("#")[0])
    assert words[0] == "pip", line
    return [str(dist) if w == "dist" else str(dist / w.removeprefix("dist/")) if w.startswith("dist/") else w for w in words[1:]]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", *readme_install("pip wheel", dist), "-q"], cwd=ROOT, check=True)
    return next(dist.glob("edgesd-*.whl"))


@pytest.fixture(scope="module", params=["newest", "lowest"])
def runtime_venv(request, wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"torchfree-{request.param}") / "venv"
    venv.create(root, with_pip=True)
    pip = [root / "bin" / "python", "-m", "pip"]
    if request.param == "newest":  # README's line first (it names the wheel being built: its version is today's)
        subprocess.run([*pip, *readme_install("pip install 'dist/", wheel.parent), "-q", "--no-compile"], check=True)
    pins = lowest_requirements() if request.param == "lowest" else []
    # --no-compile: bytecode for ray's thousands of modules took 16 s a venv; Python compiles what it imports
    subprocess.run([*pip, "install", "-q", "--no-compile", f"{wheel}[{','.join(RUNTIME_EXTRAS)}]", *pins], check=True)
    return root


def run(venv_dir: Path, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([venv_dir / "bin" / args[0], *args[1:]], capture_output=True, text=True, cwd="/", **kwargs)


def test_wheel_installs_the_runtime_only(runtime_venv):
    pins = dict(re.sub(r"\[.*\]", "", p).split("==") for p in lowest_requirements())  # ray[data] is ray
    code = ("import importlib.util as u, importlib.metadata as m, json, edgesd, edgesd.pipelines, edgesd.cli; "
            "print([x for x in ('torch', 'diffusers', 'transformers', 'optimum') if u.find_spec(x)]); "
            f"print(json.dumps({{p: m.version(p) for p in {sorted(pins)}}}))")
    done = run(runtime_venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    absent, versions = done.stdout.splitlines()
    assert absent == "[]"
    versions = json.loads(versions)
    if runtime_venv.parent.name.startswith("torchfree-lowest"):
        assert {p: Version(v) for p, v in versions.items()} == {p: Version(v) for p, v in pins.items()}
    size = sum(f.stat().st_size for f in runtime_venv.rglob("*") if f.is_file()) / 2**20
    print(f"torch-free runtime venv: {size:.0f} MiB, {versions}")


@pytest.mark.parametrize("layout,backend", [("edgesd", "onnxruntime"), ("edgesd", "openvino"),
                                            ("optimum", "onnxruntime"), ("optimum", "openvino")])
def test_img2img_runs_without_torch(runtime_venv, layout, backend, exported, optimum_exported, tmp_path):
    folder = exported["tiny-sd2"] if layout == "edgesd" else optimum_exported[{"onnxruntime": "onnx"}.get(backend, backend)]
    out = tmp_path / "out.jpg"  # parameters in EXIF: Pillow's API for it changed within the versions allowed
    done = run(runtime_venv, "edgesd", "img2img", str(folder), "--image", str(ROOT / "tests/data/small.png"),
               "--prompt", "hills", "--seed", "1", "--steps", "4", "-o", str(out), "--backend", backend, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outputs"] == [str(out)] and result["seed"] == 1 and out.stat().st_size > 0
    again = run(runtime_venv, "edgesd", "img2img", str(folder), "--image", str(ROOT / "tests/data/small.png"), "--replay", str(out),
                "-o", str(tmp_path / "again.png"), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["results"][0]["settings"]["prompt"] == "hills", again.stderr
    check = run(runtime_venv, "python", "-c", "import torch")
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr


def test_export_says_which_extra_it_needs(runtime_venv, tmp_path):
    done = run(runtime_venv, "edgesd", "export", "random:tiny-sd1", "-o", str(tmp_path / "m"))
    assert done.returncode == 2 and "pip install 'edgesd[export]'" in done.stderr
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in done.stderr  # CPU torch first


def test_bench_runs_without_torch(runtime_venv, exported, tmp_path):
    out = tmp_path / "bench.json"
    done = run(runtime_venv, "edgesd", "bench", str(exported["tiny-sd1"]), "--backend", "onnxruntime", "--resolution", "64",
               "--steps", "4", "--strength", "0.5", "--repeat", "2", "--warmup", "0", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result and "median" in done.stderr  # --json: stdout is the JSON, as img2img's
    assert result["backend"] == "onnxruntime" and result["unet_steps"] == 3  # PNDM: int(4 * 0.5) steps + 1 PLMS warm-up
    assert result["warm"]["step"]["n"] == 2 * 3 and result["warm"]["total"]["median"] > 0
    assert result["peak_rss_mib"] > 0 and result["model_folder_mib"] > 0


def test_inpaint_runs_without_torch(runtime_venv, exported, tmp_path):
    from PIL import Image

    mask = tmp_path / "mask.png"
    canvas = Image.new("L", (64, 48))
    canvas.paste(255, (16, 8, 48, 40))
    canvas.save(mask)
    out = tmp_path / "out.png"
    done = run(runtime_venv, "edgesd", "inpaint", str(exported["tiny-sd2"]), "--image", str(ROOT / "tests/data/small.png"),
               "--mask", str(mask), "--prompt", "a boat", "--seed", "1", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["settings"]["task"] == "inpaint" and out.stat().st_size > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_controlnets_run_without_torch(runtime_venv, backend, exported, controlnets, depth_estimator, tmp_path):
    """Two ControlNets steered by the input's Canny edges (OpenCV from the control extra, at its lowest
    version too) and by its depth map (a DPT estimator): the same image as in the development environment."""
    from PIL import Image
    from test_pipeline_parity import assert_images_close

    from edgesd import Img2ImgPipeline
    from edgesd.control import DepthEstimator, canny

    out, source = tmp_path / "out.png", ROOT / "tests/data/small.png"
    nets = [controlnets["tiny-controlnet-sd1"][1], controlnets["tiny-controlnet-sd1-bgr"][1]]
    done = run(runtime_venv, "edgesd", "img2img", str(exported["tiny-sd1"]), "--image", str(source), "--prompt", "hills",
               "--seed", "1", "--steps", "4", "--backend", backend, "--precision", "fp32", "-o", str(out),
               "--controlnet", f"{nets[0]}:0.9", "--control-image", "canny",
               "--controlnet", f"{nets[1]}:0.9", "--control-image", "depth", "--depth-model", str(depth_estimator[1]))
    assert done.returncode == 0, done.stderr
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32", controlnet=nets)
    depth = DepthEstimator.load(depth_estimator[1], backend, inference_precision="fp32")
    here = pipe(source, "hills", seed=1, num_inference_steps=4, control_image=[canny(source), depth(source)],
                controlnet_conditioning_scale=0.9)
    assert_images_close([Image.open(out).convert("RGB")], here.images)


def test_a_folder_runs_on_ray_without_torch(runtime_venv, exported, tmp_path):
    """`--ray` starting a local cluster whose workers have the torch-free runtime and edgesd[ray] only,
    with the lowest Ray allowed (its `concurrency`) and today's (its `compute`): the local batch's files."""
    from PIL import Image
    from test_ray import make_inputs, same_files

    inputs = make_inputs(tmp_path / "in")
    (inputs / "broken.png").unlink()
    for name, extra in (("local", []), ("ray", ["--ray", "--ray-workers", "2"])):
        done = run(runtime_venv, "edgesd", "img2img", str(exported["tiny-sd2"]), "-i", str(inputs), "-p", "a lake",
                   "--seed", "4", "-o", str(tmp_path / name), *extra, timeout=600)
        assert done.returncode == 0, done.stderr
    same_files(tmp_path / "local", tmp_path / "ray")
    assert len(list((tmp_path / "ray").iterdir())) == 3 and Image.open(tmp_path / "ray" / "gray16.png").text["edgesd"]


def test_outpaint_runs_without_torch(runtime_venv, exported, tmp_path):
    out = tmp_path / "out.png"
    done = run(runtime_venv, "edgesd", "outpaint", str(exported["tiny-sd2"]), "--image", str(ROOT / "tests/data/small.png"),
               "--left", "16", "--prompt", "sky", "--seed", "1", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["settings"]["extension"]["left"] == 16 and out.stat().st_size > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_loras_merge_without_torch(runtime_venv, backend, exported, lora_files, tmp_path):
    """Two LoRAs (kohya and diffusers format) read with safetensors' numpy API and found in the graph
    with onnx at the lowest versions allowed: the same image as in the development environment."""
    from PIL import Image
    from test_pipeline_parity import assert_images_close

    from edgesd import Img2ImgPipeline

    kohya, unet_only = lora_files["sd1-both-kohya"], lora_files["sd1-unet"]
    out = tmp_path / "out.png"
    done = run(runtime_venv, "edgesd", "img2img", str(exported["tiny-sd1"]), "--image", str(ROOT / "tests/data/small.png"),
               "--prompt", "hills", "--seed", "1", "--steps", "4", "--backend", backend, "--precision", "fp32",
               "--lora", f"{kohya}:0.7", "--lora", str(unet_only), "-o", str(out))
    assert done.returncode == 0, done.stderr
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32",
                                loras=[(kohya, 0.7), unet_only])
    expected = pipe(Image.open(ROOT / "tests/data/small.png"), "hills", seed=1, num_inference_steps=4).images
    with Image.open(out) as made:
        assert_images_close([made.convert("RGB")], expected)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_tiny_vae_runs_without_torch(runtime_venv, backend, exported, tiny_vae, tmp_path):
    from PIL import Image
    from test_pipeline_parity import assert_images_close

    from edgesd import Img2ImgPipeline

    out = tmp_path / "out.png"
    done = run(runtime_venv, "edgesd", "img2img", str(exported["tiny-sd1"]), "--image", str(ROOT / "tests/data/small.png"),
               "--prompt", "hills", "--seed", "1", "--steps", "4", "--backend", backend, "--precision", "fp32",
               "--vae", str(tiny_vae["exported"]), "-o", str(out))
    assert done.returncode == 0, done.stderr
    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend=backend, device="cpu", inference_precision="fp32",
                                vae=tiny_vae["exported"])
    expected = pipe(Image.open(ROOT / "tests/data/small.png"), "hills", seed=1, num_inference_steps=4).images
    with Image.open(out) as made:
        assert_images_close([made.convert("RGB")], expected)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sdxl_runs_without_torch(runtime_venv, backend, sdxl, tmp_path):
    """An SDXL folder (two tokenizers, time ids, pooled embeddings) with its own options, at the lowest
    versions allowed and today's: the same image as in the development environment."""
    from PIL import Image
    from test_pipeline_parity import assert_images_close

    from edgesd import Img2ImgPipeline

    folder, out = sdxl["tiny-sdxl"]["exported"], tmp_path / "out.png"
    done = run(runtime_venv, "edgesd", "img2img", str(folder), "--image", str(ROOT / "tests/data/small.png"), "--prompt", "hills",
               "--prompt-2", "snow", "--seed", "1", "--steps", "4", "--strength", "0.6", "--backend", backend,
               "--precision", "fp32", "-o", str(out))
    assert done.returncode == 0, done.stderr
    pipe = Img2ImgPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32")
    expected = pipe(Image.open(ROOT / "tests/data/small.png"), "hills", prompt_2="snow", seed=1, num_inference_steps=4,
                    strength=0.6).images
    with Image.open(out) as made:
        assert_images_close([made.convert("RGB")], expected)


def test_a_ready_export_downloads_without_torch(runtime_venv, exported, tmp_path):
    """huggingface_hub at the lowest version allowed and today's, against the fake hub of test_hub."""
    import threading

    from test_hub import FakeHub

    hub = FakeHub()
    hub.repos = {"edgesd/tiny-sd1": exported["tiny-sd1"]}
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint,
               "EDGESD_CACHE": str(tmp_path / "cache")}
        done = run(runtime_venv, "edgesd", "img2img", "edgesd/tiny-sd1", "--image", str(ROOT / "tests/data/small.png"),
                   "--prompt", "hills", "--steps", "2", "--backend", "onnxruntime", "-o", str(tmp_path / "out.png"), env=env)
        assert done.returncode == 0, done.stderr
        assert hub.fetched and not any("openvino" in name for name in hub.fetched)
    finally:
        hub.shutdown()


def test_hostile_inputs_fail_cleanly_without_torch(runtime_venv, exported, tmp_path):
    """The schemas (pydantic at its lowest allowed version too) and the LoRA checks where users run:
    a replayed revision that is a path, a manifest of the wrong type, a LoRA holding NaN, an output
    folder that is the input folder; each one line and exit 2, nothing written."""
    import shutil

    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    from safetensors.numpy import save_file

    small = str(ROOT / "tests/data/small.png")
    info = PngInfo()
    info.add_text("edgesd", json.dumps({"prompt": "x", "model": "owner/repo", "hub_revision": f"../../../../{tmp_path}/x"}))
    Image.new("RGB", (8, 8)).save(tmp_path / "shared.png", pnginfo=info)
    broken = tmp_path / "broken"
    shutil.copytree(exported["tiny-sd1"], broken)
    manifest = json.loads((broken / "edgesd.json").read_text())
    (broken / "edgesd.json").write_text(json.dumps({**manifest, "latent_channels": "4"}))
    save_file({"lora_unet_conv_in.lora_down.weight": np.full((2, 4, 3, 3), np.nan, np.float32),
               "lora_unet_conv_in.lora_up.weight": np.ones((32, 2, 1, 1), np.float32)}, str(tmp_path / "nan.safetensors"))
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(small).save(folder / "a.png")
    cases = {
        "revision": ["img2img", "-i", small, "--replay", str(tmp_path / "shared.png"), "-o", str(tmp_path / "o.png")],
        "field latent_channels": ["img2img", str(broken), "-i", small, "-p", "x", "-o", str(tmp_path / "o.png")],
        "NaN": ["img2img", str(exported["tiny-sd1"]), "-i", small, "-p", "x", "--lora", str(tmp_path / "nan.safetensors"),
                "-o", str(tmp_path / "o.png")],
        "is the input folder": ["img2img", str(exported["tiny-sd1"]), "-i", str(folder), "-o", str(folder), "-p", "x",
                                "--overwrite"],
    }
    for says, args in cases.items():
        done = run(runtime_venv, "edgesd", *args, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")})
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, (says, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "nan.safetensors", "photos", "shared.png"]
    assert [p.name for p in folder.iterdir()] == ["a.png"]
