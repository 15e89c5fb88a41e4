"""`edgesd export`, added to the runtime's CLI through the `edgesd.commands` entry point.
Importing this module is cheap: torch and friends load only when the command runs."""

import os
import warnings
from enum import Enum
from pathlib import Path

import typer


class Format(str, Enum):
    onnx = "onnx"
    openvino = "openvino"
    both = "both"


def register(app: typer.Typer) -> None:
    from edgesd.cli import debugging, run_guarded

    @app.command()
    def export(
        source: str = typer.Argument(..., help="Hub id (e.g. stabilityai/sd-turbo, stabilityai/sdxl-turbo; madebyollin/taesd or taesdxl: a tiny VAE folder for --vae; lllyasviel/control_v11p_sd15_canny: a ControlNet folder for --controlnet), a local diffusers folder, a single-file checkpoint (.safetensors, SD 1.x/2.x/SDXL, as model sites share them), or random:RECIPE."),
        output: Path = typer.Option(..., "--output", "-o", help="Model folder to write (must not exist unless --overwrite)."),
        format: Format = typer.Option(Format.onnx, "--format", "-f", help="onnx, openvino or both."),
        overwrite: bool = typer.Option(False, help="Replace OUTPUT if it is an edgesd model folder (only once the new export is complete); never the source, a folder holding it, or anything else."),
        precision: str | None = typer.Option(
            None, "--precision",  # no -p: that is --prompt in the generating commands
            help="fp32, fp16, int8-weights (int8 weights, float compute: smaller) or int8 (UNet weights and activations, "
                 "calibrated: faster on CPU; text encoder and VAE get int8-weights), optionally per submodel "
                 "(text_encoder, text_encoder_2, unet, vae_encoder, vae_decoder), e.g. 'unet=int8,vae_decoder=fp16' or "
                 "'int8-weights,vae_decoder=fp32'. Default: --target's, else fp32.",
        ),
        target: str | None = typer.Option(
            None, "--target", help="The device the model is for, which picks the default --precision: "
                                   "cpu (int8), gpu (fp16, OpenVINO iGPU) or cuda (fp16)."),
        config: str | None = typer.Option(
            None, "--config", help="For a single-file checkpoint: a diffusers folder or hub id of the same architecture, "
                                   "whose configs and tokenizers it lacks. Default: the released repo diffusers infers "
                                   "from the weights (its configs are downloaded)."),
        calibration_images: Path | None = typer.Option(
            None, "--calibration-images", help="Folder of images to calibrate int8 on (default: built-in procedural images)."),
        calibration_samples: int = typer.Option(
            32, "--calibration-samples", help="UNet inputs recorded from the fp32 pipeline to calibrate int8 on."),
        calibration_size: int | None = typer.Option(
            None, "--calibration-size",
            help="Square image side to calibrate int8 at (default: the model's native size, at most 256: "
                 "onnxruntime's calibrator needs more than 24 GB for SD 1.5 at 512)."),
    ):
        """Export a diffusers SD/SDXL model (or a tiny VAE, a ControlNet) to an edgesd folder, validated against torch, optionally quantized."""
        from edgesd.export import export_model
        from edgesd.export.precision import precision_for

        spec = run_guarded(precision_for, precision, target)
        if precision is None and target:
            typer.echo(f"--target {target}: exporting with --precision {spec}", err=True)
        formats = ("onnx", "openvino") if format is Format.both else (format.value,)
        with warnings.catch_warnings():
            if not debugging():  # torch's tracer and the exporters warn a lot about what is fine here
                warnings.simplefilter("ignore")
                for library in ("DIFFUSERS", "TRANSFORMERS"):  # read as they import (diffusers: "Multiple distributions ...")
                    os.environ.setdefault(f"{library}_VERBOSITY", "error")
            run_guarded(export_model, source, output, formats=formats, overwrite=overwrite, precision=spec, config=config,
                        calibration_images=calibration_images, calibration_samples=calibration_samples,
                        calibration_size=calibration_size)
