"""`--ray` (and `edgesd.batch.run(..., ray=)`) on a Ray cluster the tests start (2 CPUs, shut down
after): the outputs are the local batch's, file for file and pixel for pixel, on a folder with
same-stem inputs, a 16-bit PNG, a non-image file and a corrupt image; a run killed midway and
resumed writes only what is missing."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesd import batch

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / "examples" / "input.png"
RAY = Path(sys.executable).with_name("ray")


def edgesd(*args, cwd=None, **kwargs):
    return subprocess.Popen([sys.executable, "-c", "from edgesd.cli import main; main()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, **kwargs)


def finished(process: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)  # a hang fails, not stalls CI
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported["tiny-sd2"]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster of 2 CPUs (`ray start --head`) with token authentication (its token in
    this process's environment, which the CLI runs inherit), its address; stopped after the module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")  # Ray < 2.52 ignores both
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard", "false",
                        "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def make_inputs(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    photo = Image.open(INPUT).convert("RGB").resize((96, 72))
    photo.save(folder / "a.png")
    photo.save(folder / "a.jpg")  # the same stem: a.png and a.jpg.png
    Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257)).save(folder / "gray16.png")  # 16-bit
    for k in range(count - 3):
        photo.rotate(90 * (k + 1), expand=True).save(folder / f"r{k}.webp")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "notes.txt").write_text("not an image")
    return folder


def same_files(a: Path, b: Path) -> None:
    """The same file names, pixels and stored parameters."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        x, y = Image.open(a / name), Image.open(b / name)
        assert np.array_equal(np.asarray(x), np.asarray(y)), name
        assert x.text == y.text, name


def test_ray_writes_what_the_local_batch_writes(model, cluster, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    common = ("img2img", model, "-i", inputs, "-p", "a lake", "--seed", 3, "--json")
    local = finished(edgesd(*common, "-o", tmp_path / "local"))
    assert local.returncode == 1, local.stderr  # one corrupt input; the others written
    viaray = finished(edgesd(*common, "-o", tmp_path / "ray", "--ray", cluster, "--ray-workers", 2))
    assert viaray.returncode == 1, viaray.stderr
    same_files(tmp_path / "local", tmp_path / "ray")
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["a.jpg.png", "a.png", "gray16.png"]
    ours, theirs = json.loads(local.stdout), json.loads(viaray.stdout)
    for key in ("results", "failures"):
        assert [entry["image"] for entry in ours[key]] == [entry["image"] for entry in theirs[key]]
    assert [Path(f["image"]).name for f in theirs["failures"]] == ["broken.png"]
    assert theirs["failures"][0]["error"] == ours["failures"][0]["error"]
    assert [Path(s["image"]).name for s in theirs["skipped"]] == ["notes.txt"]
    assert "failed" in viaray.stderr and "broken.png" in viaray.stderr and "Traceback" not in viaray.stderr
    again = finished(edgesd(*common, "-o", tmp_path / "ray", "--ray", cluster))  # all done: nothing to run
    assert again.returncode == 1 and json.loads(again.stdout)["results"] == []


def test_a_killed_ray_run_resumes_writing_only_what_is_missing(model, cluster, tmp_path):
    inputs = make_inputs(tmp_path / "in", count=8)
    (inputs / "broken.png").unlink()
    common = ("img2img", model, "-i", inputs, "-p", "a lake", "--seed", 3, "--steps", 50, "--strength", 1)
    out = tmp_path / "out"
    run = edgesd(*common, "-o", out, "--ray", cluster, "--ray-workers", 1, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the driver dies; Ray ends its job's workers
    run.communicate()
    deadline = time.monotonic() + 60  # the killed job's worker is gone when its claim's process is
    while any(_alive(claim) for claim in out.glob(".*.claim")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert 0 < len(written) < 8
    resumed = finished(edgesd(*common, "-o", out, "--ray", cluster, "--json"))
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert len(now) == 8 and not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries or claims left
    assert all(now[name] == mtime for name, mtime in written.items())  # nothing written twice
    assert len(result["results"]) == 8 - len(written)
    local = finished(edgesd(*common, "-o", tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    same_files(tmp_path / "local", out)


def _alive(claim: Path) -> bool:
    try:
        os.kill(int(claim.read_text().split()[0]), 0)  # "PID HOST"
    except (OSError, ValueError):
        return False
    return True


def test_the_python_api_runs_a_folder_here_and_on_ray(model, cluster, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    here = batch.run(model, inputs, tmp_path / "here", "a lake", seed=5, strength=0.6)
    there = batch.run(model, inputs, tmp_path / "there", "a lake", seed=5, strength=0.6, ray=cluster, ray_workers=1)
    same_files(tmp_path / "here", tmp_path / "there")
    assert [d["image"] for d in here.done] == [d["image"] for d in there.done] and len(here.done) == 3
    assert [f["image"] for f in there.failures] == [str(inputs / "broken.png")]
    assert there.skipped == here.skipped == [{"image": str(inputs / "notes.txt"),
                                              "reason": "not an image input (reads .png .jpg .jpeg .webp .bmp .tif .tiff)"}]
    again = batch.run(model, inputs, tmp_path / "there", "a lake", seed=5, strength=0.6, ray=cluster)
    assert again.done == [] and len(again.skipped) == 4  # resumable: three done, notes.txt; broken.png tried again
    assert [f["image"] for f in again.failures] == [str(inputs / "broken.png")]


def test_ray_refusals_are_one_line(model, cluster, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    args = ("img2img", model, "-i", inputs, "-p", "x", "-o", tmp_path / "out")
    too_many = finished(edgesd(*args, "--ray", cluster, "--ray-workers", 3))
    assert too_many.returncode == 2 and "3 Ray workers of 1 CPUs need 3 CPUs; the cluster has 2" in too_many.stderr
    alone = finished(edgesd(*args, "--ray-workers", 2))
    assert alone.returncode == 2 and "--ray-workers is for --ray" in alone.stderr
    code = "import sys; sys.modules['ray'] = None; from edgesd.cli import main; main()"  # Ray not installed
    missing = subprocess.run([sys.executable, "-c", code, *map(str, args), "--ray"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "pip install 'edgesd[ray]'" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_worker_that_cannot_open_the_model_stops_the_run_in_one_line(model, cluster, tmp_path):
    """The model's weights damaged under the workers (as on a node with a bad copy): edgesd's error, not Ray's traceback."""
    from edgesd.errors import EdgesdError
    from edgesd.jobs import plan_jobs
    from edgesd.pipelines import plan_load

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    load = plan_load(copy)
    for weights in (copy / "unet").iterdir():  # its ONNX and OpenVINO files (the size is read from config.json)
        if weights.name != "config.json":
            weights.write_bytes(b"damaged")
    inputs = make_inputs(tmp_path / "in")
    plan = plan_jobs(inputs, tmp_path / "out", 1, False)
    with pytest.raises(EdgesdError, match="the Ray run stopped: .*unet"):
        batch.run_on_ray(batch.Batch("img2img", load, {"prompt": "x", "seed": 1}), plan.jobs, batch.Summary(), cluster, 1)
