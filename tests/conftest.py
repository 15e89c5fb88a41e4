"""Shared fixtures: tiny random-weight diffusers models, built once per session and exported."""

import logging
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def diffusers_folders(tmp_path_factory) -> dict[str, Path]:
    """recipe name -> a diffusers folder saved as released repos are."""
    pytest.importorskip("torch")  # the export side: tests needing it skip where torch is absent
    from edgesd.export import recipes
    from edgesd.export.random_model import build_random_pipeline

    root = tmp_path_factory.mktemp("diffusers")
    folders = {}
    for name in ("tiny-sd1", "tiny-sd2"):
        build_random_pipeline(recipes.load(name), root / name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def exported(diffusers_folders, tmp_path_factory) -> dict[str, Path]:
    """recipe name -> an edgesd model folder with both ONNX and OpenVINO IR, exported from
    `random:NAME` (same seed, so the same weights as `diffusers_folders[NAME]`)."""
    from edgesd.export import export_model

    root = tmp_path_factory.mktemp("exported")
    logging.getLogger("edgesd").setLevel(logging.WARNING)
    return {
        name: export_model(f"random:{name}", root / name, formats=("onnx", "openvino"))
        for name in diffusers_folders
    }


@pytest.fixture(scope="session")
def optimum_exported(diffusers_folders, tmp_path_factory) -> dict[str, Path]:
    """format -> tiny-sd1 as `optimum-cli export onnx|openvino` writes it (no edgesd.json, no
    tokenizer.json: the tokenizer is vocab.json + merges.txt), the layout users already have."""
    from optimum.exporters.onnx import main_export as export_onnx
    from optimum.exporters.openvino import main_export as export_openvino

    root = tmp_path_factory.mktemp("optimum")
    source = diffusers_folders["tiny-sd1"]
    export_onnx(str(source), root / "onnx", task="image-to-image", do_validation=False)
    export_openvino(str(source), root / "openvino", task="image-to-image")
    for folder in (root / "onnx", root / "openvino"):
        assert not (folder / "tokenizer" / "tokenizer.json").exists() and (folder / "tokenizer" / "merges.txt").exists()
    return {"onnx": root / "onnx", "openvino": root / "openvino"}
