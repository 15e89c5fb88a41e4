"""edgesd.export: diffusers model -> edgesd model folder (ONNX and/or OpenVINO IR + edgesd.json).

Needs the `export` extra (torch, diffusers, transformers, optimum). The runtime never imports this.
"""

import contextlib
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from edgesd.errors import EdgesdError
from edgesd.formats import FORMATS as FILE_FORMATS
from edgesd.model_folder import FORMAT_VERSION, MANIFEST, SUBMODELS, sha256
from edgesd.schema import SDXL_CONDITIONING

log = logging.getLogger("edgesd")
FORMATS = tuple(FILE_FORMATS)  # what --format may name
_FAMILY_BY_CROSS_ATTENTION = {768: "sd1", 1024: "sd2"}
_PACKAGES = ("edgesd", "torch", "diffusers", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "openvino")

__all__ = ["export_model", "FORMATS"]


def export_model(
    source: str,
    output: str | Path,
    formats=("onnx",),
    overwrite: bool = False,
    precision: str = "fp32",
    calibration_images: str | Path | None = None,
    calibration_samples: int = 32,
    calibration_size: int | None = None,
    config: str | None = None,
) -> Path:
    """Export SOURCE (local diffusers folder, hub id, single-file checkpoint, or random:RECIPE) into the
    model folder OUTPUT. `config`: for a single-file checkpoint, a diffusers folder or hub id of its
    architecture (default: the released repo diffusers infers from its weights).

    `precision`: a spec as `edgesd export --precision` takes (see edgesd.export.precision), e.g.
    "int8" or "unet=int8,vae_decoder=fp16". The fp32 export is validated first; non-fp32
    submodels are then converted from it (the UNet's int8 calibrated on `calibration_samples`
    inputs recorded from the fp32 pipeline, on built-in images or those in `calibration_images`,
    `calibration_size` pixels square: default the model's native size, at most 256).

    The folder is built under a temporary name beside OUTPUT and renamed when complete, so a
    failed export never leaves a folder that looks valid.
    """
    from edgesd.export import recipes
    from edgesd.export.calibration import check_calibration_options
    from edgesd.export.precision import parse_precision

    if source.startswith("random:"):  # an unknown recipe is answered before torch loads
        recipes.load(source.removeprefix("random:"))
    plan = parse_precision(precision)
    if plan.needs_calibration:  # fail before the long export, not after it
        check_calibration_options(calibration_images, calibration_samples, calibration_size)
    quantization = None if plan.is_fp32 else (plan, calibration_images and Path(calibration_images), calibration_samples,
                                              calibration_size)
    _require_export_extra(formats, plan)
    output = Path(output)
    formats = tuple(dict.fromkeys(formats))
    if not formats or set(formats) - set(FORMATS):
        raise EdgesdError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}")
    _check_output(source, output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; the model folder is not
    try:
        _export_into(source, partial, formats, quantization, config)
        _make_readable(partial)
        _replace(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("model folder written: %s", output)
    return output


def _check_output(source: str, output: Path, overwrite: bool) -> None:
    """Replace only what an export made: never the source, a folder holding it, a file, or a folder
    that is not an edgesd model folder (--overwrite would otherwise delete whatever is there)."""
    local = Path(source)
    if local.exists() and (output.resolve() == local.resolve() or output.resolve() in local.resolve().parents):
        raise EdgesdError(f"-o {output} is the source or holds it; write the export to another folder")
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise EdgesdError(f"{output} already exists; pass --overwrite to replace it")
    if not output.is_dir() or not (output / MANIFEST).is_file():
        raise EdgesdError(f"{output} exists and is not an edgesd model folder, so --overwrite does not replace it; "
                          "choose another -o or remove it yourself")


def _require_export_extra(formats, plan=None) -> None:
    needed = ["torch", "diffusers", "transformers", "optimum", "onnx", *(["openvino"] if "openvino" in formats else [])]
    if plan is not None and not plan.is_fp32 and "openvino" in formats:
        needed.append("nncf")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu (its CPU build), then " * ("torch" in missing)
        raise EdgesdError(f"edgesd export needs the export extra ({', '.join(missing)} missing): {torch}pip install "
                          "'edgesd[export]' ('.[export]' in a clone of edgesd, 'WHEEL[export]' with a wheel)")


def _export_into(spec: str, folder: Path, formats, quantization=None, config: str | None = None) -> None:
    from edgesd.export.controlnet import export_controlnet, is_controlnet
    from edgesd.export.depth import export_depth_estimator, is_depth_estimator
    from edgesd.export.load import load_pipeline
    from edgesd.export.source import resolve_source
    from edgesd.export.tiny_vae import export_tiny_vae, is_tiny_vae

    with tempfile.TemporaryDirectory(prefix="edgesd-source-") as scratch:
        source = resolve_source(spec, Path(scratch), config)
        if is_tiny_vae(source.folder):
            if quantization:
                raise EdgesdError("a tiny VAE is exported in fp32 only (it is small already); drop --precision/--target")
            (folder / MANIFEST).write_text(json.dumps(export_tiny_vae(source, folder, formats), indent=2))
            return
        component = ("controlnet", export_controlnet) if is_controlnet(source.folder) else \
            ("depth_estimator", export_depth_estimator) if is_depth_estimator(source.folder) else None
        if component:  # one submodel, stored as the UNet's precision would be
            submodel, export = component
            manifest, references = export(source, folder, formats)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if quantization:
                from edgesd.export.precision import component_precision
                from edgesd.export.quantize import quantize_folder

                quantize_folder(folder, formats, component_precision(quantization[0], submodel), references)
            return
        pipe = load_pipeline(source.folder)
        references = _export_onnx(pipe, folder)
    validation = _convert_and_validate(folder, formats, references)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (folder / tokenizer).is_dir():
            _write_tokenizer_json(folder / tokenizer)
    manifest = _manifest(pipe, source, folder, formats, validation)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if quantization:  # precision: the fp32 folder above is complete and validated; calibrate on it, then convert
        from edgesd.export.quantize import quantize_folder

        plan, images, samples, size = quantization
        quantize_folder(folder, formats, plan, references, images, samples, size)


def _export_onnx(pipe, folder: Path) -> dict:
    """optimum's ONNX export of the pipeline, one submodel at a time (the UNet last), each torch module's
    weights released once its graph is written. Returns the validation references, taken from the
    modules as optimum exports them (it turns the SDXL encoders' hidden states on).

    One at a time because optimum, writing a graph over 2 GB, reloads it with its weights to gather
    them in one file while the torch module is still held: a full-size SDXL pipeline (14 GB of fp32
    modules, 10 GB of them the UNet) exported whole would need about 35 GB, this way about twice the
    UNet. The UNet takes ControlNet residuals (edgesd.export.controlnet)."""
    from optimum.exporters.onnx import export_models
    from optimum.exporters.utils import get_diffusion_models_for_export

    from edgesd.export.controlnet import unet_with_residuals
    from edgesd.export.validate import reference_outputs

    log.info("exporting to ONNX with optimum")
    models = get_diffusion_models_for_export(pipe, exporter="onnx")
    references = reference_outputs(pipe)
    models["unet"] = unet_with_residuals(*models["unet"])
    pipe.vae.to("meta")  # optimum exports copies of it
    with _size_following(pipe.unet):
        for name in sorted(models, key=lambda name: name == "unet"):
            module, onnx_config = models.pop(name)
            export_models({name: (module, onnx_config)}, folder, output_names=[f"{name}/{FILE_FORMATS['onnx'].main_file}"])
            (module.save_config if hasattr(module, "save_config") else module.config.save_pretrained)(folder / name)
            module.to("meta")
            del module
            gc.collect()
    pipe.scheduler.save_pretrained(folder / "scheduler")
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, tokenizer, None) is not None:
            getattr(pipe, tokenizer).save_pretrained(folder / tokenizer)
    pipe.save_config(folder)
    return references


def _convert_and_validate(folder: Path, formats, references: dict) -> dict:
    """From the ONNX export of each submodel in `references` ({name: (torch output, feeds)}): the
    OpenVINO IR if asked, the ONNX UNet's attention fused for onnxruntime, every format validated
    against torch ({name: {backend: max deviation}}), and the ONNX files removed if ONNX was not
    asked for."""
    from edgesd.export.validate import max_deviation
    from edgesd.sessions import BACKEND_OF_FORMAT

    if "openvino" in formats:
        from edgesd.export.openvino import convert_to_openvino

        for name in references:
            log.info("converting %s to OpenVINO IR", name)
            convert_to_openvino(folder / name / FILE_FORMATS["onnx"].main_file)
    if "onnx" in formats and "unet" in references:  # for onnxruntime only, so after the IR's conversion
        from edgesd.export.fuse_attention import fuse_unet_attention

        fuse_unet_attention(folder / "unet" / FILE_FORMATS["onnx"].main_file)
    validation = {name: {} for name in references}
    for fmt in formats:
        backend = BACKEND_OF_FORMAT[fmt].name
        for name in references:
            validation[name][backend] = max_deviation(name, *references[name], backend, folder / name / FILE_FORMATS[fmt].main_file)
            log.info("validated %s on %s: max deviation from torch %.2e", name, backend, validation[name][backend])
    if "onnx" not in formats:
        for file in folder.glob("*/model.onnx*"):
            file.unlink()
    return validation


@contextlib.contextmanager
def _size_following(unet):
    """Trace the UNet on diffusers' size-following path, so the export takes any latent size.

    diffusers hands the skip connections' sizes to the upsamplers only when a latent side is not a
    multiple of 2 ** num_upsamplers; traced at the native size, the export would upsample by a fixed
    2x and could only take multiples of the downsampling (64 px on SD). With a factor no size is a
    multiple of, every side takes that path: Resize to the skip's traced shape (at 2x, the same
    nearest-neighbour output)."""
    saved = unet.num_upsamplers
    unet.num_upsamplers = 62
    try:
        yield
    finally:
        unet.num_upsamplers = saved


def _write_tokenizer_json(folder: Path) -> None:
    from edgesd.tokenizer import ClipTokenizer

    ClipTokenizer(folder).save(folder / "tokenizer.json")


def _files(folder: Path, fmt: str) -> dict:
    return {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
        for name in FILE_FORMATS[fmt].files
        if (folder / name).exists()
    }


def _manifest(pipe, source, folder: Path, formats, validation) -> dict:
    from edgesd.export.fuse_attention import has_fused_attention

    vae, unet = pipe.vae.config, pipe.unet.config
    scale_factor = 2 ** (len(vae.block_out_channels) - 1)
    sdxl = unet.get("addition_embed_type") == "text_time"
    family = source.recipe.get("family") or ("sdxl" if sdxl else _FAMILY_BY_CROSS_ATTENTION.get(unet.cross_attention_dim, "sd"))
    extra = {"conditioning": {key: bool(pipe.config[key]) for key in SDXL_CONDITIONING}} if sdxl else {}
    return {
        "format_version": FORMAT_VERSION,
        "family": family,
        "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon"),
        "latent_channels": vae.latent_channels,
        "vae_scaling_factor": vae.scaling_factor,
        "vae_scale_factor": scale_factor,
        "sample_size": unet.sample_size * scale_factor,
        "unet_any_size": True,  # see _size_following
        "unet_controlnet_inputs": True,  # see edgesd.export.controlnet
        "onnx_attention_fused": "onnx" in formats and has_fused_attention(folder / "unet" / FILE_FORMATS["onnx"].main_file),
        "defaults": source.recipe.get("defaults", {}),
        **extra,
        "submodels": {
            name: {
                "formats": {fmt: {"precision": "fp32", "files": _files(folder / name, fmt)} for fmt in formats},
                "validation_max_abs_deviation": validation[name],
            }
            for name in SUBMODELS if name in validation
        },
        "support_files": support_files(folder),
        "provenance": _provenance(source, formats),
    }


def support_files(folder: Path) -> dict:
    """The files the runtime reads besides the engines' (tokenizer and submodel configs): covered by
    hashes too, so a damaged tokenizer is found like a damaged UNet. Not the scheduler's config: users
    edit it (edgesd's own errors point there), and its values are checked when read (schema.py)."""
    files = sorted(f for f in folder.glob("*/*") if f.is_file() and (f.parent.name.startswith("tokenizer") or f.name == "config.json")
                   and f.parent.name != "scheduler")
    return {f"{f.parent.name}/{f.name}": {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in files}


def _provenance(source, formats) -> dict:
    """Where the folder came from: a hub id or recipe as given, a local source by its folder's name
    only (a manifest is shared with the folder; an absolute path would carry a user name)."""
    return {
        "source": Path(source.spec).name if Path(source.spec).exists() else source.spec,
        "revision": source.revision,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {"formats": list(formats)},
        "packages": {p: _version(p) for p in _PACKAGES},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _make_readable(folder: Path) -> None:
    """Some exporters write private temp files (0600); a model folder is read by other users too."""
    mask = os.umask(0)
    os.umask(mask)
    for file in folder.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~mask)


def _replace(partial: Path, output: Path) -> None:
    """Move the finished folder into place; an old folder is removed only once the new one is there."""
    if not output.exists():
        os.replace(partial, output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    os.replace(partial, output)
    shutil.rmtree(old, ignore_errors=True)
