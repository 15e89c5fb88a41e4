"""bench/: the comparison runner, the FLOP counter and the report, on the tiny test models.

Third-party systems that are not installed here are recorded as unavailable (with the reason) by
compare.py; the test accepts that and checks everything that did run.
"""

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"edgesd_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flops = _module("flops")
compare = _module("compare")
report = _module("report")


def _run(*args, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------------------------------------
# flops.py


def _synthetic_model(path: Path):
    """Conv, ConvTranspose, batched MatMul and Gemm with a symbolic batch: FLOPs known by hand."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def init(name, *shape):
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    nodes = [
        # x [N,3,8,8] -> conv 3x3 pad 1, 3->16: y [N,16,8,8]; MACs = N*16*8*8 * 3*3*3
        helper.make_node("Conv", ["sample", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        # grouped conv 16->16, groups 4, 1x1: MACs = N*16*8*8 * (16/4)
        helper.make_node("Conv", ["c1", "w2"], ["c2"], group=4),
        # transposed conv 16->8, k2 s2: y [N,8,16,16]; each input pixel scatters: MACs = N*16*8*8 * 8*2*2
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], strides=[2, 2]),
        # [N,8,16,16] -> [N,8,256] ; MatMul with [256,32]: MACs = N*8*32*256
        helper.make_node("Reshape", ["c3", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w4"], ["m"]),
        # batched matmul [N,8,32] x [N,32,8]... via transpose: MACs = N*8*8*32
        helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["m", "mt"], ["mm"]),
        # Gemm [N,5] x B^T (B [7,5], transB): MACs = N*7*5
        helper.make_node("Gemm", ["encoder_hidden_states", "w5"], ["g"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "synthetic",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("mm", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, None)],
        [init("w1", 16, 3, 3, 3), init("w2", 16, 4, 1, 1), init("w3", 16, 8, 2, 2), init("w4", 256, 32), init("w5", 7, 5),
         numpy_helper.from_array(np.array([0, 8, 256], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))

    def expected(n):  # 2 flops per MAC
        return 2 * n * (16 * 64 * 27 + 16 * 64 * 4 + 16 * 64 * 8 * 4 + 8 * 32 * 256 + 8 * 8 * 32 + 7 * 5)

    return expected


def test_flops_counts_a_known_graph_exactly(tmp_path):
    expected = _synthetic_model(tmp_path / "m.onnx")
    for batch in (1, 3):
        result = flops.count(tmp_path / "m.onnx", batch=batch, latent=(8, 8))
        assert result["unresolved"] == []
        assert result["flops"] == expected(batch)
        assert result["by_op"]["Conv"]["nodes"] == 2 and result["by_op"]["MatMul"]["nodes"] == 2


def test_flops_of_the_exported_unet_scale_with_batch_and_latent(exported, tmp_path):
    unet = exported["tiny-sd1"] / "unet"
    one = flops.count(unet / "model.onnx", batch=1, latent=(32, 32))
    two = flops.count(unet / "model.onnx", batch=2, latent=(32, 32))
    half = flops.count(unet / "model.onnx", batch=2, latent=(16, 16))
    assert one["unresolved"] == [] and one["flops"] > 0
    assert set(one["by_op"]) >= {"Conv", "MatMul"}
    assert two["flops"] == 2 * one["flops"]  # everything in the UNet runs per sample
    # convolutions scale with the area (x4); self-attention with its square, so a bit more
    assert 4 * half["flops"] < two["flops"] < 16 * half["flops"]
    # every tensor in external data (as exporters may write models over 2 GB): only shapes are read
    onnx = pytest.importorskip("onnx")
    onnx.save_model(onnx.load(str(unet / "model.onnx")), str(tmp_path / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    assert flops.count(tmp_path / "model.onnx", batch=2, latent=(32, 32))["flops"] == two["flops"]
    if importlib.util.find_spec("openvino") and (unet / "openvino_model.xml").is_file():
        # OpenVINO's own shape propagation on the IR: an independent count of the same network
        assert flops.count(unet / "openvino_model.xml", batch=2, latent=(32, 32))["flops"] == two["flops"]


def test_flops_cli_and_cpu_peak(exported, tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "flops.json"
    _run(BENCH / "flops.py", exported["tiny-sd1"] / "unet", "--batch", "2", "--latent", "32x32", "--unet-time", "0.01",
         "--no-sgemm", "--json", out)
    result = json.loads(out.read_text())
    cpu = result["cpu"]
    assert cpu["physical_cores"] >= 1 and cpu["clock_ghz"] > 0 and cpu["peak_gflops"] > 0
    assert cpu["peak_gflops"] == pytest.approx(cpu["physical_cores"] * cpu["clock_ghz"] * cpu["flops_per_cycle_per_core"])
    assert result["achieved"]["gflops"] == pytest.approx(result["gflop"] / 0.01)


# ---------------------------------------------------------------------------------------------
# compare.py


@pytest.fixture(scope="module")
def comparison(diffusers_folders, exported, tmp_path_factory) -> dict:
    """One end-to-end run over every default system (inline: one process, so the test stays quick)."""
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    _run(BENCH / "compare.py", diffusers_folders["tiny-sd1"], exported["tiny-sd1"], "--resolution", "64", "--steps", "4",
         "--strength", "0.5", "--guidance", "7.5", "--repeat", "1", "--warmup", "0", "--isolation", "inline",
         "--out", out, timeout=600)
    return json.loads(out.read_text())


def test_compare_runs_every_system_or_says_why(comparison):
    systems = comparison["systems"]
    assert list(systems) == compare.DEFAULT_SYSTEMS
    for key, entry in systems.items():
        assert entry["status"] in ("ok", "unavailable", "failed"), key
        if entry["status"] != "ok":
            assert entry["reason"], key
        if entry["status"] == "unavailable":
            assert "not installed" in entry["reason"], entry["reason"]
    for key in ("edgesd-ort", "edgesd-ov-fp32", "edgesd-ov-auto"):
        assert systems[key]["status"] == "ok", systems[key].get("reason")
    ran = {k: e for k, e in systems.items() if e["status"] == "ok"}
    if importlib.util.find_spec("diffusers"):
        assert systems["diffusers-torch"]["status"] == "ok", systems["diffusers-torch"].get("reason")
    # every system did the same work: as many UNet calls, and (fp32) the same picture as the reference
    assert {e["summary"]["unet_calls_per_run"] for e in ran.values()} == {3}
    for key, entry in ran.items():
        s = entry["summary"]
        assert s["total"]["median"] > 0 and s["unet_call"]["median"] > 0
        assert sum(s["stages"].values()) == pytest.approx(s["total"]["median"], rel=1e-6)
        assert s["achieved_gflops"] > 0
        if entry["precision"] == "fp32" and entry.get("output_vs_reference"):
            assert entry["output_vs_reference"]["max_abs"] <= 2, (key, entry["output_vs_reference"])
    assert comparison["unet_flops"]["flops"] > 0 and comparison["unet_flops"]["batch"] == 2
    assert comparison["versions"]["edgesd"] and comparison["machine"]["peak_gflops"] > 0
    for name, row in comparison["ratios"].items():
        assert row["time"] > 0, name
    assert any(t["other"] == "diffusers-torch" for t in comparison["targets"]) == ("diffusers-torch" in ran)
    assert comparison["command"].startswith("python bench/compare.py ")


def test_compare_inpainting_does_the_same_work_everywhere(diffusers_folders, exported, tmp_path):
    """--task inpaint: every system repaints the same mask (tiny-sd1's 4-channel UNet: blended per step)."""
    out = tmp_path / "inpaint.json"
    _run(BENCH / "compare.py", diffusers_folders["tiny-sd1"], exported["tiny-sd1"], "--task", "inpaint", "--resolution", "64",
         "--steps", "3", "--strength", "1.0", "--guidance", "7.5", "--repeat", "1", "--warmup", "0", "--isolation", "inline",
         "--systems", "edgesd-ort,edgesd-ov-fp32,diffusers-torch,optimum-ort", "--no-flops", "--out", out, timeout=600)
    result = json.loads(out.read_text())
    assert result["settings"]["task"] == "inpaint"
    for key, entry in result["systems"].items():
        assert entry["status"] == "ok", (key, entry.get("reason"))
        assert entry["output_vs_reference"]["max_abs"] <= 2, (key, entry["output_vs_reference"])
    assert {e["summary"]["unet_calls_per_run"] for e in result["systems"].values()} == {4}  # PNDM: 3 steps + 1 warm-up


def test_compare_isolates_systems_and_records_failures(exported, tmp_path):
    """Process isolation gives each system its own memory figure; a broken system does not stop the run."""
    out = tmp_path / "iso.json"
    _run(BENCH / "compare.py", tmp_path / "no-such-diffusers-folder", exported["tiny-sd1"], "--resolution", "64",
         "--steps", "2", "--strength", "1.0", "--guidance", "1.0", "--repeat", "2", "--warmup", "1", "--no-flops",
         "--systems", "edgesd-ort,diffusers-torch", "--out", out)
    result = json.loads(out.read_text())
    ort, torch_ = result["systems"]["edgesd-ort"], result["systems"]["diffusers-torch"]
    assert torch_["status"] == "failed" and "not a diffusers folder" in torch_["reason"]
    assert ort["status"] == "ok"
    assert [r["round"] for r in ort["runs"]] == [0, 1]
    assert len({t["pid"] for t in ort["turns"]}) == 2  # a fresh process per turn
    assert ort["summary"]["peak_rss_mib"] > 50
    # PNDM (skip_prk_steps) adds one step: 2 steps at strength 1 are 3 UNet calls, here at batch 1 (no guidance)
    assert ort["summary"]["unet_calls_per_run"] == 3 and result["settings"]["unet_batch"] == 1
    assert result["unet_flops"] is None and "skipped" in result["unet_flops_reason"]


def test_a_missing_package_makes_a_system_unavailable_not_a_crash(monkeypatch):
    monkeypatch.setitem(compare.SYSTEMS["optimum-ort"], "needs", ["no_such_package_for_edgesd_tests"])
    result = compare.worker("optimum-ort", spec={}, runs=1, warmup=0, output=None)
    assert result["status"] == "unavailable"
    assert "no_such_package_for_edgesd_tests is not installed" in result["reason"]


# ---------------------------------------------------------------------------------------------
# report.py


def test_report_renders_results(comparison, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "tiny.json").write_text(json.dumps(comparison))
    broken = copy.deepcopy(comparison)
    broken["name"] = "tiny-missing"
    broken["systems"]["optimum-ort"].update(status="unavailable", reason="optimum.onnxruntime is not installed (test)")
    broken["systems"]["optimum-ort"]["summary"] = {}
    (results / "tiny-missing.json").write_text(json.dumps(broken))
    (results / "junk.json").write_text("{}")
    out = tmp_path / "REPORT.md"
    _run(BENCH / "report.py", *sorted(results.glob("*.json")), "-o", out)
    text = out.read_text()
    assert text.startswith("# edgesd benchmarks")
    for key, entry in comparison["systems"].items():
        assert f"`{key}`" in text
    assert comparison["machine"]["cpu_model"] in text
    assert comparison["command"] in text
    assert "| run | edgesd / other | total time |" in text
    assert "optimum.onnxruntime is not installed (test)" in text
    assert "junk.json" in text  # listed as not used, not fatal
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![Per-stage latency per system](report.png)" in text
    else:
        assert "Chart not drawn: matplotlib is not installed" in text


# ---------------------------------------------------------------------------------------------
# precision.py


def test_precision_table_builds_runs_and_reports(exported, tmp_path):
    fp32 = exported["tiny-sd1"]
    variant = tmp_path / "int8-weights"
    _run(BENCH / "precision.py", "build", fp32, "-o", variant, "--precision", "int8-weights")
    manifest = json.loads((variant / "edgesd.json").read_text())
    assert {f["precision"] for f in manifest["submodels"]["unet"]["formats"].values()} == {"int8-weights"}
    assert json.loads((fp32 / "edgesd.json").read_text())["submodels"]["unet"]["formats"]["onnx"]["precision"] == "fp32"

    out = tmp_path / "precision.json"
    _run(BENCH / "precision.py", "run", fp32, f"int8-weights={variant}", "--resolution", 64, "--steps", 2,
         "--rounds", 1, "--out", out, timeout=600)
    assert not any("fidelity" in row for row in json.loads(out.read_text())["rows"].values())
    _run(BENCH / "precision.py", "fidelity", out, timeout=600)  # as `run --fidelity` would have, afterwards
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert set(rows) == {"onnxruntime/fp32", "onnxruntime/int8-weights", "openvino/fp32", "openvino/fp32/f32",
                         "openvino/int8-weights"}
    for key, row in rows.items():
        assert "error" not in row["summary"], (key, row["summary"])
        assert row["summary"]["step_s"] > 0 and row["summary"]["peak_rss_mib"] > 0
    for backend in ("onnxruntime", "openvino"):
        assert rows[f"{backend}/int8-weights"]["disk_mib"] < 0.7 * rows[f"{backend}/fp32"]["disk_mib"]
        fidelity = rows[f"{backend}/int8-weights"]["fidelity"]
        assert 30 < fidelity["psnr_mean"] < float("inf") and fidelity["unet_cosine_min"] > 0.99
    sizes = {t["what"]: t for t in data["targets"]}
    assert sizes["int8-weights folder size, ONNX"]["ratio"] == pytest.approx(
        rows["onnxruntime/int8-weights"]["disk_mib"] / rows["onnxruntime/fp32"]["disk_mib"])

    (tmp_path / f"profile-{variant.name}-openvino-64.txt").write_text("# the variant's UNet\n")
    (tmp_path / "profile-another-model-openvino-64.txt").write_text("# not in this table\n")
    report_file = tmp_path / "REPORT.md"
    _run(BENCH / "report.py", out, out, "-o", report_file, "--no-chart")  # twice: the profile is shown once
    text = report_file.read_text()
    assert "## Precisions (issue 5)" in text and "`openvino/int8-weights`" in text
    assert text.count("# the variant's UNet") == 1 and "# not in this table" not in text
    assert data["command"] in text and all(c in text for c in data["fidelity_commands"])


# ---------------------------------------------------------------------------------------------
# lora.py


def test_lora_bench_measures_both_cases_and_reports_them(exported, lora_files, tmp_path):
    out = tmp_path / "lora.json"
    _run(BENCH / "lora.py", "run", exported["tiny-sd1"], lora_files["sd1-both"], "--rounds", "1", "--resolution", "64",
         "--out", out)
    result = json.loads(out.read_text())
    assert result["schema"] == report.LORA_SCHEMA and result["lora"]["file"] == "sd1-both.safetensors"
    for backend in ("onnxruntime", "openvino"):
        cases = result["summary"][backend]
        assert cases["LoRA"]["load_s"] > 0 and cases["no LoRA"]["peak_mib"] > 0
        assert cases["ratios"]["peak_mib"] == pytest.approx(cases["LoRA"]["peak_mib"] / cases["no LoRA"]["peak_mib"])
    text = report.render([out], tmp_path / "REPORT.md", None, [str(out)])[0]
    assert "## LoRA at load time" in text and result["command"] in text


# ---------------------------------------------------------------------------------------------
# tiny VAE: compare.py's edgesd-ov-tiny-vae system and tiny_vae.py's quality cost


def test_compare_runs_edgesd_with_a_tiny_vae(diffusers_folders, exported, tiny_vae, tmp_path):
    """On a folder of its own (--tiny-vae-model: the `--target cpu` export), the others on EDGESD_FOLDER."""
    out, own = tmp_path / "tiny-vae.json", shutil.copytree(exported["tiny-sd1"], tmp_path / "own-folder").resolve()
    _run(BENCH / "compare.py", diffusers_folders["tiny-sd1"], exported["tiny-sd1"], "--resolution", "64", "--steps", "2",
         "--strength", "0.5", "--guidance", "0", "--repeat", "1", "--warmup", "0", "--isolation", "inline", "--no-flops",
         "--systems", "edgesd-ov-auto,edgesd-ov-tiny-vae", "--tiny-vae", tiny_vae["exported"],
         "--tiny-vae-model", own, "--out", out, timeout=600)
    result = json.loads(out.read_text())
    systems = result["systems"]
    assert systems["edgesd-ov-tiny-vae"]["status"] == "ok", systems["edgesd-ov-tiny-vae"].get("reason")
    assert systems["edgesd-ov-tiny-vae"]["summary"]["total"]["median"] > 0
    assert systems["edgesd-ov-tiny-vae"]["info"]["model"] == result["models"]["tiny_vae_model"]["path"] == str(own)
    assert systems["edgesd-ov-auto"]["info"]["model"] == str(exported["tiny-sd1"].resolve())
    for chosen, folder in (("edgesd-ov-auto", own), ("edgesd-ov-tiny-vae", exported["tiny-sd2"] / "unet")):
        refused = subprocess.run([sys.executable, BENCH / "compare.py", diffusers_folders["tiny-sd1"], exported["tiny-sd1"],
                                  "--systems", chosen, "--tiny-vae-model", folder], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "--tiny-vae-model: the edgesd-ov-tiny-vae system runs it" in refused.stderr


def test_tiny_vae_quality_cost(exported, tiny_vae, tmp_path):
    out = tmp_path / "quality.json"
    _run(BENCH / "tiny_vae.py", exported["tiny-sd1"], tiny_vae["exported"], "--resolution", "64", "--steps", "2",
         "--seeds", "1", "--out", out)
    result = json.loads(out.read_text())
    assert result["schema"] == report.TINY_VAE_SCHEMA and -1 < result["ssim_mean"] < 1 and result["psnr_mean"] > 0
    assert result["rows"][0]["decode_s"]["tiny"] > 0
    text = report.render([out], tmp_path / "REPORT.md", None, [str(out)])[0]
    assert "## Tiny VAE: image-quality cost" in text


# ---------------------------------------------------------------------------------------------
# serve.py


def test_serve_bench_measures_the_server_against_the_api_and_reports_it(exported, tmp_path):
    pytest.importorskip("uvicorn")
    out = tmp_path / "serve.json"
    _run(BENCH / "serve.py", exported["tiny-sd1"], "--resolution", 64, "--steps", 2, "--backend", "onnxruntime",
         "--rounds", 2, "--clients", "1,2", "--requests", 2, "--out", out)
    result = json.loads(out.read_text())
    assert result["same_pixels"] == {"edgesd_api": True, "a1111_api": True}
    assert [(c["clients"], c["requests"], c["failed"]) for c in result["concurrency"]] == [(1, 2, 0), (2, 4, 0)]
    _run(BENCH / "report.py", out, "-o", tmp_path / "REPORT.md", "--no-chart")
    text = (tmp_path / "REPORT.md").read_text()
    assert "## edgesd serve: the server's cost" in text and "| edgesd_api |" in text and result["command"] in text


# ---------------------------------------------------------------------------------------------
# first_image.py


def test_first_image_bench_times_one_off_commands_per_engine_and_reports_them(exported, tmp_path):
    out = tmp_path / "first.json"
    _run(BENCH / "first_image.py", exported["tiny-sd1"], "--resolution", 64, "--steps", 2, "--rounds", 1, "--out", out)
    result = json.loads(out.read_text())
    model = result["models"]["tiny-sd1"]
    assert result["schema"] == report.FIRST_IMAGE_SCHEMA and 0 < model["weights_mib"] < 256
    for backend in ("onnxruntime", "openvino"):
        run = model["runs"][backend][0]
        assert run["command"] > run["load"] + run["call"] > 0
    text = report.render([out], tmp_path / "REPORT.md", None, [str(out)])[0]
    assert "## A one-off run's first image per engine" in text and "| tiny-sd1 | 13 |" in text and result["command"] in text
