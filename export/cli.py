"""`edgesd export`, added to the runtime's CLI through the `edgesd.commands` entry point.
Importing this module is cheap: torch and friends load only when the command runs."""

from enum import Enum
from pathlib import Path

import typer


class Format(str, Enum):
    onnx = "onnx"
    openvino = "openvino"
    both = "both"


def register(app: typer.Typer) -> None:
    from edgesd.cli import run_guarded

    @app.command()
    def export(
        source: str = typer.Argument(..., help="Hub id (e.g. stabilityai/sd-turbo), a local diffusers folder, or random:RECIPE."),
        output: Path = typer.Option(..., "--output", "-o", help="Model folder to write (must not exist unless --overwrite)."),
        format: Format = typer.Option(Format.onnx, "--format", "-f", help="onnx, openvino or both."),
        overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists (only once the new export is complete)."),
    ):
        """Export a diffusers SD model to an edgesd model folder, validated against torch."""
        from edgesd.export import export_model

        formats = ("onnx", "openvino") if format is Format.both else (format.value,)
        run_guarded(export_model, source, output, formats=formats, overwrite=overwrite)
