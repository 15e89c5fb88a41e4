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
