"""Ready exports from the hub (edgesd.hub), without a network: a small HTTP server on 127.0.0.1 answers
the hub API that huggingface_hub uses (repo info, file HEAD/GET) for HF_ENDPOINT, serving model folders
this session exported. edgesd runs in subprocesses with their own HF_HOME, as a user would."""

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests/data/small.png"


class FakeHub(ThreadingHTTPServer):
    """repos: repo id -> local folder served as its main revision. Records every file GET; files
    named in `failing` answer 501, a server error that huggingface_hub does not retry (it backs off
    for ~23 s on 500)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos, self.fetched, self.failing = {}, [], set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _route(self):
        hub, path = self.server, unquote(self.path.split("?")[0])
        for repo in hub.repos:
            if path in (f"/api/models/{repo}", f"/api/models/{repo}/revision/main",
                        f"/api/models/{repo}/revision/{hub.commit(repo)}"):
                body = json.dumps({"id": repo, "modelId": repo, "sha": hub.commit(repo), "private": False,
                                   "siblings": [{"rfilename": name} for name in hub.files(repo)]}).encode()
                return 200, {"Content-Type": "application/json"}, body
            for revision in ("main", hub.commit(repo)):
                prefix = f"/{repo}/resolve/{revision}/"
                if path.startswith(prefix) and path[len(prefix):] in hub.files(repo):
                    name = path[len(prefix):]
                    data = hub.files(repo)[name].read_bytes()
                    headers = {"X-Repo-Commit": hub.commit(repo), "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                               "Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
                    return 200, headers, data
        return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b'{"error": "not found"}'

    def do_HEAD(self):
        status, headers, _ = self._route()
        self._answer(status, headers, b"")

    def do_GET(self):
        status, headers, body = self._route()
        name = unquote(self.path).split("/resolve/", 1)[-1].split("/", 1)[-1]
        if status == 200 and "/resolve/" in self.path:
            if name in self.server.failing:
                return self._answer(501, {}, b"server error")
            self.server.fetched.append(name)
        self._answer(status, headers, body)

    def _answer(self, status, headers, body):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture(scope="module")
def hub(exported, optimum_exported, diffusers_folders):
    server = FakeHub()
    server.repos = {"edgesd/tiny-sd1": exported["tiny-sd1"], "optimum/tiny-sd1-openvino": optimum_exported["openvino"],
                    "someone/diffusers-only": diffusers_folders["tiny-sd1"]}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def edgesd(hub, home: Path, *args, offline=False):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "HF_HOME": str(home / "hf"), "HF_ENDPOINT": hub.endpoint,
           "HF_HUB_DISABLE_TELEMETRY": "1", "EDGESD_CACHE": str(home / "edgesd-cache"), **({"HF_HUB_OFFLINE": "1"} if offline else {})}
    return subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=home)


def run_img2img(hub, home, repo, *args, **kwargs):
    return edgesd(hub, home, "img2img", repo, "-i", SMALL, "-p", "hills", "--steps", "2", "--seed", "1",
                  "-o", home / f"out-{len(list(home.glob('out-*')))}.png", *args, **kwargs)


def test_downloads_only_what_the_engine_runs_then_works_offline(hub, tmp_path):
    hub.fetched.clear()
    done = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--backend", "openvino")
    assert done.returncode == 0, done.stderr
    assert any(name.endswith("openvino_model.bin") for name in hub.fetched)
    assert not any(name.endswith("model.onnx") for name in hub.fetched), "ONNX files are not needed on OpenVINO"
    hub.fetched.clear()
    again = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--backend", "openvino", offline=True)
    assert again.returncode == 0, again.stderr
    assert hub.fetched == []
    # the other engine's files come on demand, the rest from the cache
    done = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--backend", "onnxruntime")
    assert done.returncode == 0, done.stderr
    assert hub.fetched and all(name.endswith(("model.onnx", "model.onnx_data")) for name in hub.fetched)


def test_outputs_name_the_repo_and_replay_fetches_it_again(hub, tmp_path):
    from edgesd.outputs import read_parameters

    done = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--backend", "onnxruntime")
    assert done.returncode == 0, done.stderr
    stored = read_parameters(tmp_path / "out-0.png")
    assert stored["model"] == "edgesd/tiny-sd1" and stored["hub_revision"] == hub.commit("edgesd/tiny-sd1")
    shutil.rmtree(tmp_path / "hf")  # the hub cache cleared: the stored snapshot path is gone
    hub.fetched.clear()
    again = edgesd(hub, tmp_path, "img2img", "-i", SMALL, "--replay", tmp_path / "out-0.png", "-o", tmp_path / "again.png")
    assert again.returncode == 0, again.stderr
    assert hub.fetched and (tmp_path / "again.png").exists()


def test_an_interrupted_download_resumes(hub, tmp_path):
    hub.fetched.clear()
    hub.failing = {"unet/openvino_model.bin"}
    failed = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--backend", "openvino")
    assert failed.returncode == 2 and "run again to resume" in failed.stderr, failed.stderr
    first = list(hub.fetched)
    hub.fetched.clear()
    hub.failing = set()
    done = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--backend", "openvino")
    assert done.returncode == 0, done.stderr
    assert "unet/openvino_model.bin" in hub.fetched and not set(first) & set(hub.fetched)


def test_the_api_and_bench_take_repo_ids(hub, tmp_path):
    code = ("from edgesd import Img2ImgPipeline; "
            "pipe = Img2ImgPipeline.load('edgesd/tiny-sd1', backend='onnxruntime', revision='main'); "
            "print(pipe.folder.path, pipe.format)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint,
           "EDGESD_CACHE": str(tmp_path / "edgesd-cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path, fmt = done.stdout.split()
    assert "models--edgesd--tiny-sd1/snapshots" in path and fmt == "onnx"
    bench = edgesd(hub, tmp_path, "bench", "edgesd/tiny-sd1", "--backend", "onnxruntime", "--resolution", "64", "--steps", "2",
                   "--repeat", "1", "--warmup", "0")
    assert bench.returncode == 0 and "model folder" in bench.stdout, bench.stderr


def test_backend_auto_takes_a_repo_as_it_is(hub, tmp_path):
    """Its size unknown before the download, auto takes OpenVINO's files; the folder then runs on them."""
    done = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["backend"] == "openvino", done.stderr


def test_optimum_layout_repos(hub, tmp_path):
    done = run_img2img(hub, tmp_path, "optimum/tiny-sd1-openvino")
    assert done.returncode == 0, done.stderr


def test_offline_without_the_repo_cached(hub, tmp_path):
    done = run_img2img(hub, tmp_path, "edgesd/tiny-sd1", offline=True)
    assert done.returncode == 2 and "not in the local hub cache" in done.stderr


def test_wrong_repos_say_what_to_do(hub, tmp_path):
    missing = run_img2img(hub, tmp_path, "nobody/nothing")
    assert missing.returncode == 2 and "nobody/nothing is neither a local folder nor a repo on the hub" in missing.stderr, missing.stderr
    diffusers = run_img2img(hub, tmp_path, "someone/diffusers-only")
    assert diffusers.returncode == 2
    assert "is not an exported model" in diffusers.stderr and "edgesd export someone/diffusers-only" in diffusers.stderr


def test_a_model_that_looks_like_a_path_is_a_path_found_or_not(tmp_path, monkeypatch):
    """A typo in a local path is "no such folder", never a hub lookup (which would query the hub with it)."""
    from edgesd.errors import ModelFolderError
    from edgesd.hub import is_repo_id
    from edgesd.pipelines import plan_load

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for path in ("models/does-not-exist", "./models/does-not-exist", "./owner/repo", "/owner/repo", "~/repo", "a/b/c"):
        assert not is_repo_id(path), path
    assert is_repo_id("stabilityai/sd-turbo") and is_repo_id(Path("owner/repo.v2"))
    with pytest.raises(ModelFolderError, match="model folder models/does-not-exist does not exist"):
        plan_load("models/does-not-exist")
