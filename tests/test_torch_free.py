"""The runtime installed from a built wheel into a venv without torch, diffusers or transformers:
`import edgesd` and `edgesd img2img` work there, and torch is provably absent."""

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("torchfree")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True)
    wheel = next((root / "dist").glob("edgesd-*.whl"))
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    return root / "venv"


def run(venv_dir: Path, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([venv_dir / "bin" / args[0], *args[1:]], capture_output=True, text=True, cwd="/", **kwargs)


def test_wheel_installs_the_runtime_only(runtime_venv):
    code = ("import importlib.util as u, edgesd, edgesd.pipeline, edgesd.cli; "
            "print([m for m in ('torch', 'diffusers', 'transformers', 'optimum') if u.find_spec(m)])")
    done = run(runtime_venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    size = sum(f.stat().st_size for f in runtime_venv.rglob("*") if f.is_file()) / 2**20
    print(f"torch-free runtime venv: {size:.0f} MiB")


def test_img2img_runs_without_torch(runtime_venv, exported, tmp_path):
    out = tmp_path / "out.png"
    done = run(runtime_venv, "edgesd", "img2img", str(exported["tiny-sd2"]), "--image", str(ROOT / "examples/input.png"),
               "--prompt", "hills", "--seed", "1", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outputs"] == [str(out)] and result["seed"] == 1 and out.stat().st_size > 0
    check = run(runtime_venv, "python", "-c", "import torch")
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr


def test_export_says_which_extra_it_needs(runtime_venv, tmp_path):
    done = run(runtime_venv, "edgesd", "export", "random:tiny-sd1", "-o", str(tmp_path / "m"))
    assert done.returncode == 2 and "pip install 'edgesd[export]'" in done.stderr


def test_bench_runs_without_torch(runtime_venv, exported, tmp_path):
    out = tmp_path / "bench.json"
    done = run(runtime_venv, "edgesd", "bench", str(exported["tiny-sd1"]), "--backend", "onnxruntime", "--resolution", "64",
               "--steps", "4", "--strength", "0.5", "--repeat", "2", "--warmup", "0", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["backend"] == "onnxruntime" and result["unet_steps"] == 3  # PNDM: int(4 * 0.5) steps + 1 PLMS warm-up
    assert result["warm"]["step"]["n"] == 2 * 3 and result["warm"]["total"]["median"] > 0
    assert result["peak_rss_mib"] > 0 and result["model_folder_mib"] > 0
    assert "median" in done.stdout
