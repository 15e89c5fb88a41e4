"""Session details the pipeline relies on, beyond what parity tests cover."""

import contextlib
import sys

import numpy as np
import pytest

from edgesd.sessions.onnxruntime import OnnxRuntimeSession


def no_residuals(folder) -> dict:
    """The zero ControlNet residuals the UNet of a folder edgesd exported takes where none acts."""
    from edgesd.model_folder import open_model_folder
    from edgesd.models.unet import no_residuals as zeros

    return zeros(open_model_folder(folder).unet_config)


def test_io_binding_gives_the_same_outputs_and_keeps_unchanged_inputs(exported):
    """IO binding is what CUDA uses; the CPU provider runs the same code path here."""
    path = exported["tiny-sd1"] / "unet" / "model.onnx"
    plain, bound = OnnxRuntimeSession(path, "cpu"), OnnxRuntimeSession(path, "cpu", io_binding=True)
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 77, 32), dtype=np.float32)
    hidden.setflags(write=False)
    for t in (900.0, 500.0):
        feeds = {"sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
                 "timestep": np.asarray(t, np.float32), "encoder_hidden_states": hidden, **no_residuals(exported["tiny-sd1"])}
        np.testing.assert_array_equal(bound.run(feeds)["out_sample"], plain.run(feeds)["out_sample"])
        if t == 900.0:
            resident = bound._resident["encoder_hidden_states"][1]
    assert bound._resident["encoder_hidden_states"][1] is resident  # not uploaded again
    assert bound._resident["sample"][0] is feeds["sample"]  # writeable inputs are re-bound each call


def test_openvino_compile_cache_only_when_asked_for_on_cpu(exported, tmp_path, monkeypatch):
    """On the CPU the cache costs more memory than the compile time it saves (see the module docstring)."""
    pytest.importorskip("openvino")
    from edgesd.sessions.openvino import OpenVINOSession

    monkeypatch.setenv("EDGESD_CACHE", str(tmp_path / "default-cache"))
    path = exported["tiny-sd1"] / "vae_decoder" / "openvino_model.xml"
    latents = {"latent_sample": np.zeros((1, 4, 8, 8), np.float32)}
    plain = OpenVINOSession(path, "cpu")
    cached = OpenVINOSession(path, "cpu", cache_dir=tmp_path / "asked")
    np.testing.assert_array_equal(plain.run(latents)["sample"], cached.run(latents)["sample"])
    assert not (tmp_path / "default-cache").exists()
    assert list((tmp_path / "asked").glob("*.blob"))


def test_openvino_gives_back_the_mapped_weights_and_computes_the_same(exported):
    """The mapped .bin's pages are dropped after compiling; what the engine reads after that still comes
    from the file, so outputs equal those of a session that keeps them, call after call."""
    pytest.importorskip("openvino")
    from edgesd.sessions import mapped_weights
    from edgesd.sessions.openvino import OpenVINOSession

    path = exported["tiny-sd1"] / "unet" / "openvino_model.xml"
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32), "timestep": np.asarray(500, np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32), **no_residuals(exported["tiny-sd1"])}
    released = OpenVINOSession(path, "cpu", precision="fp32")
    first = released.run(feeds)["out_sample"]
    kept = OpenVINOSession(path, "cpu", precision="fp32")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(mapped_weights, "release", lambda path: 0)
        m.setattr(mapped_weights, "released_while", lambda path: contextlib.nullcontext())
        reference = kept.run(feeds)["out_sample"]
    np.testing.assert_array_equal(first, reference)
    assert mapped_weights.release(path.with_suffix(".bin")) > 0  # the file is mapped, and its pages were given back
    np.testing.assert_array_equal(released.run(feeds)["out_sample"], reference)


def test_releasing_pages_of_a_mapped_file_keeps_its_contents(tmp_path):
    import mmap

    from edgesd.sessions import mapped_weights

    data = np.random.default_rng(1).integers(0, 255, 1 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "w.bin").write_bytes(data)
    with open(tmp_path / "w.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert view[:] == data
        with mapped_weights.released_while(tmp_path / "w.bin"):
            assert view[::4096] == data[::4096]
        released = mapped_weights.release(tmp_path / "w.bin")
        assert view[:] == data
    assert released >= len(data) or not sys.platform.startswith("linux")
    assert mapped_weights.release(tmp_path / "not-mapped.bin") == 0


@pytest.mark.parametrize("low_memory", [False, True])
def test_wrap_sessions_sees_every_engine_call(exported, low_memory):
    """The public hook tools use to time or record calls, also for sessions opened later (low memory)."""
    from collections import Counter

    from edgesd import Img2ImgPipeline

    pipe = Img2ImgPipeline.load(exported["tiny-sd2"], backend="onnxruntime", device="cpu", low_memory=low_memory)
    calls = Counter()

    class Counting:
        def __init__(self, name, session):
            self.name, self.session, self.input_types = name, session, session.input_types

        def run(self, feeds):
            calls[self.name] += 1
            return self.session.run(feeds)

    pipe.wrap_sessions(Counting)
    result = pipe(np.zeros((64, 64, 3), np.uint8), "x", num_inference_steps=4, strength=1.0, guidance_scale=0, seed=0)
    assert calls == {"text_encoder": 1, "vae_encoder": 1, "unet": len(result.timings["steps"]), "vae_decoder": 1}
    assert len(result.timings["steps"]) == 4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sessions_answer_by_name(exported, backend):
    """Every output comes back under the name the exporter gave it (the text encoder's pooled output
    too, which SDXL's conditioning reads); a model with one output is read whatever it is called."""
    from edgesd.errors import ModelFolderError
    from edgesd.formats import FORMATS
    from edgesd.sessions import BACKENDS, open_session
    from edgesd.sessions.base import output

    fmt = FORMATS[BACKENDS[backend].format]
    session = open_session(backend, exported["tiny-sd1"] / "text_encoder" / fmt.main_file, "cpu", "fp32")
    ids = np.zeros((2, 77), session.input_types["input_ids"])
    outputs = session.run({"input_ids": ids})
    assert list(outputs) == ["last_hidden_state", "pooler_output"]
    assert outputs["last_hidden_state"].shape == (2, 77, 32) and outputs["pooler_output"].shape == (2, 32)
    with pytest.raises(ModelFolderError, match="no output 'text_embeds'"):
        output(outputs, "text_embeds")
    assert output({"anything": ids}, "sample") is ids


@pytest.mark.parametrize("asked", ["auto", "fp32", "bf16", "fp16"])
def test_outputs_record_the_precision_and_device_the_engine_uses(exported, asked):
    """What a pipeline records is what OpenVINO's compiled model says it runs in on this CPU (bf16
    and fp16 where the CPU has them), and the device "auto" resolved to."""
    import openvino as ov

    from edgesd import Img2ImgPipeline

    pipe = Img2ImgPipeline.load(exported["tiny-sd1"], backend="openvino", device="auto", inference_precision=asked)
    core = ov.Core()
    config = {} if asked == "auto" else {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[asked]}
    compiled = core.compile_model(str(exported["tiny-sd1"] / "unet" / "openvino_model.xml"), "CPU", config)
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert pipe.provenance["inference_precision"] == {"f32": "fp32", "f16": "fp16"}.get(used, used)
    assert pipe.provenance["device"] == "cpu"
    if asked in ("auto", "fp32"):  # onnxruntime computes in the export's precision (and refuses others)
        onnx = Img2ImgPipeline.load(exported["tiny-sd1"], backend="onnxruntime", inference_precision=asked)
        assert onnx.provenance["device"] == "cpu" and onnx.provenance["inference_precision"] == "fp32"


def test_a_precision_the_cpu_lacks_is_recorded_as_the_fp32_it_runs_in(monkeypatch):
    """The CPU plugin runs bf16 asked of a CPU without AVX512-BF16/AMX in fp32, without a word."""
    from types import SimpleNamespace

    from edgesd.sessions import openvino as sessions

    class OldCpu:
        available_devices = ["CPU"]

        def get_property(self, device, name):
            return {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8", "BIN", "EXPORT_IMPORT"],
                    "INFERENCE_PRECISION_HINT": SimpleNamespace(get_type_name=lambda: "f32")}[name]

    monkeypatch.setattr(sessions, "_import", lambda: SimpleNamespace(Core=OldCpu))
    assert [sessions.effective_precision("auto", asked, "fp32") for asked in ("fp32", "bf16", "fp16")] == ["fp32"] * 3


def test_auto_picks_the_engine_with_the_sooner_first_image(caplog, monkeypatch):
    """OpenVINO for SD-size models (a one-off command 0.47-0.49x onnxruntime's), onnxruntime for small
    ones (OpenVINO 1.2-1.8x; bench/first_image.py), each choice said with its reason."""
    from edgesd import sessions

    monkeypatch.setattr(sessions, "installed_backends", lambda: ["onnxruntime", "openvino"])
    both = ["onnx", "openvino"]
    with caplog.at_level("INFO", logger="edgesd"):
        assert sessions.choose_backend("auto", "auto", both, 13 * 2**20) == "onnxruntime"
        assert "using onnxruntime (a 13 MiB model, where OpenVINO's compile costs more than it saves)" in caplog.text
        assert sessions.choose_backend("auto", "cpu", both, 5 * 2**30) == "openvino"
        assert "using openvino (the faster engine for SD-size models on CPUs, first image included)" in caplog.text
    assert sessions.choose_backend("auto", "gpu", both, 13 * 2**20) == "openvino"  # only OpenVINO runs iGPUs
    assert sessions.choose_backend("auto", "auto", ["openvino"], 13 * 2**20) == "openvino"  # what the folder has
    assert sessions.choose_backend("auto", "auto", both) == "openvino"  # size unknown (a hub repo before its download)
    assert sessions.choose_backend("openvino", "cpu", both, 13 * 2**20) == "openvino"  # asked for
