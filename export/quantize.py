"""Turn a validated fp32 model folder into the precisions a PrecisionPlan asks for, in place.

Order: UNet calibration inputs are recorded from the fp32 folder first (when any submodel is
`int8`), then each submodel is converted per format, then its deviation from the torch reference
the fp32 export was validated against is measured on the same inputs (recorded, never fatal:
quantization is expected to deviate; fidelity of whole images is bench/fidelity.py's job).
"""

import json
import logging
import shutil
import tempfile
from pathlib import Path


from edgesd.export import quantize_onnx, quantize_openvino
from edgesd.export.calibration import DEFAULT_SAMPLES, collect_unet_calibration, image_size
from edgesd.export.precision import PrecisionPlan
from edgesd.model_folder import MANIFEST
from edgesd.export.validate import deviations
from edgesd.sessions import BACKEND_OF_FORMAT

log = logging.getLogger("edgesd")
_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino"}
_CONVERTERS = {
    ("onnx", "fp16"): quantize_onnx.to_fp16,
    ("onnx", "int8-weights"): quantize_onnx.to_int8_weights,
    ("onnx", "int8"): quantize_onnx.to_int8_static,
    ("openvino", "fp16"): quantize_openvino.to_fp16,
    ("openvino", "int8-weights"): quantize_openvino.to_int8_weights,
    ("openvino", "int8"): quantize_openvino.to_int8,
}


def apply_precision(
    folder: Path,
    formats,
    plan: PrecisionPlan,
    references: dict | None = None,
    calibration_images: Path | None = None,
    calibration_samples: int = DEFAULT_SAMPLES,
    calibration_size: int | None = None,
    converters: dict | None = None,
) -> dict:
    """Convert every non-fp32 submodel of `folder` per `plan`, for each format.

    `references`: submodel -> (torch output, feeds), as edgesd.export.validate.reference_outputs
    returns; when given, each converted submodel's max |deviation| from it is measured.
    `converters`: (format, precision) -> converter, replacing the defaults (bench/precision.py's variants).
    Returns {submodel: {"methods": {format: method}, "quantized_max_abs_deviation": {backend: float}}}.
    """
    plan = plan.of(json.loads((folder / MANIFEST).read_text())["submodels"])
    calibration = None
    if plan.needs_calibration:
        backend = "onnxruntime" if "onnx" in formats else "openvino"
        calibration = collect_unet_calibration(folder, calibration_samples, calibration_images, backend, calibration_size)
    converters = {**_CONVERTERS, **(converters or {})}
    results = {}
    for name in plan.quantized():
        precision = plan[name]
        results[name] = {"methods": {}, "quantized_max_abs_deviation": {}}
        for fmt in formats:
            log.info("converting %s (%s) to %s", name, fmt, precision)
            args = (calibration,) if precision == "int8" else ()
            method = _replace(folder / name, fmt, converters[fmt, precision], *args)
            results[name]["methods"][fmt] = method
            if references:
                backend = _BACKEND[fmt]
                deviation = max(deviations(*references[name], backend, folder / name / BACKEND_OF_FORMAT[fmt].main_file).values())
                results[name]["quantized_max_abs_deviation"][backend] = deviation
                log.info("%s %s on %s: max deviation from fp32 %.3g", name, precision, backend, deviation)
    return results


def quantize_folder(
    folder: Path,
    formats,
    plan: PrecisionPlan,
    references: dict | None = None,
    calibration_images: Path | None = None,
    calibration_samples: int = DEFAULT_SAMPLES,
    calibration_size: int | None = None,
    converters: dict | None = None,
) -> dict:
    """apply_precision on the fp32 model folder `folder` (with its edgesd.json), then record in the
    manifest each format's precision, method and new files/hashes, the deviations, and the options."""
    from edgesd.export import _files  # the manifest's own file records (bytes + sha256)

    plan = _upcast_vae(folder, plan.of(json.loads((folder / MANIFEST).read_text())["submodels"]))
    results = apply_precision(folder, formats, plan, references, calibration_images, calibration_samples, calibration_size,
                              converters)
    manifest = json.loads((folder / MANIFEST).read_text())
    for name, entry in manifest["submodels"].items():
        for fmt in formats:
            record = {"precision": plan[name]}
            if name in results:
                record["method"] = results[name]["methods"][fmt]
            entry["formats"][fmt] = {**record, "files": _files(folder / name, fmt)}
        if name in results and results[name]["quantized_max_abs_deviation"]:
            entry["quantized_max_abs_deviation"] = results[name]["quantized_max_abs_deviation"]
    options = manifest["provenance"].setdefault("options", {})
    options["precision"] = plan.spec
    if plan.needs_calibration:
        options["calibration"] = {"samples": calibration_samples, "size": image_size(manifest.get("sample_size"), calibration_size),
                                  "images": Path(calibration_images).name if calibration_images else "built-in"}  # no local path
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return results


def _upcast_vae(folder: Path, plan: PrecisionPlan) -> PrecisionPlan:
    """An SDXL VAE that overflows in fp16 (force_upcast in its config) stays fp32, as diffusers' SDXL
    pipelines upcast it: fp16 there would decode to NaN (a black image). (SD pipelines ignore the
    flag, which diffusers' AutoencoderKL sets by default.)"""
    halved = [name for name in ("vae_encoder", "vae_decoder") if plan.per_submodel.get(name) == "fp16"]
    if not halved or json.loads((folder / MANIFEST).read_text()).get("family") != "sdxl" or \
            not json.loads((folder / "vae_decoder" / "config.json").read_text()).get("force_upcast"):
        return plan
    log.warning("%s stay fp32: this model's VAE overflows in fp16 (force_upcast in its config)", " and ".join(halved))
    return PrecisionPlan({**plan.per_submodel, **dict.fromkeys(halved, "fp32")})


def _replace(submodel: Path, fmt: str, convert, *args) -> str:
    """convert(src, dst, *args) into a scratch folder beside the files, then move the result over them."""
    if fmt == "onnx":
        return quantize_onnx.replace_model(submodel, convert, *args)
    xml = submodel / BACKEND_OF_FORMAT["openvino"].main_file
    with tempfile.TemporaryDirectory(prefix="edgesd-quantize-", dir=submodel) as scratch:
        method = convert(xml, Path(scratch) / xml.name, *args)
        for produced in Path(scratch).iterdir():
            shutil.move(str(produced), submodel / produced.name)  # rename over the fp32 .xml/.bin
    return method
