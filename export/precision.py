"""`--precision` specs: which precision each submodel is stored in.

A spec is a global value, per-submodel overrides, or both, comma-separated:

    fp32                               everything fp32 (the default)
    fp16                               everything fp16 (fp32 islands where fp16 is unsafe)
    int8-weights                       int8 weights, fp32 activations, everywhere
    int8                               UNet: int8 weights and activations (static, calibrated);
                                       text encoder and VAE: int8-weights (as optimum-intel's
                                       hybrid mode treats diffusion pipelines)
    unet=int8,vae_decoder=fp16         named submodels as given, the others fp32
    int8-weights,vae_decoder=fp32      the global value, then the overrides

Activation (static) int8 needs calibration data, which edgesd gathers for the UNet only (the
UNet is >85% of the compute), so `int8` on another submodel by name is refused.

Without `--precision`, `--target DEVICE` picks the precision measured best for that kind of device
(TARGET_PRECISION; the evidence is the precision table in bench/REPORT.md); with neither, fp32.
"""

from dataclasses import dataclass

from edgesd.errors import InvalidInputError
from edgesd.model_folder import SUBMODELS

PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")
CALIBRATED = "int8"  # the one precision that needs calibration data (activation ranges)
TARGET_PRECISION = {  # the device an export is meant for -> its default precision
    "cpu": "int8",  # SD 1.5 UNet call 0.39x fp32 on onnxruntime, 0.62-0.75x bf16 on OpenVINO; a quarter of the disk
    "gpu": "fp16",  # OpenVINO iGPU computes in fp16 anyway: half the disk, no loss
    "cuda": "fp16",  # tensor cores; onnxruntime-gpu's fp16 kernels
}
_GLOBAL_INT8 = {name: "int8" if name == "unet" else "int8-weights" for name in SUBMODELS}


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision of every submodel, resolved from a spec."""

    per_submodel: dict  # submodel -> one of PRECISIONS

    def __getitem__(self, submodel: str) -> str:
        return self.per_submodel[submodel]

    def of(self, submodels) -> "PrecisionPlan":
        """The plan for a folder with these submodels (an SD folder has no text_encoder_2)."""
        return PrecisionPlan({name: value for name, value in self.per_submodel.items() if name in submodels})

    @property
    def spec(self) -> str:
        """Canonical spec (every submodel named), as recorded in the manifest's provenance."""
        return ",".join(f"{name}={value}" for name, value in self.per_submodel.items())

    @property
    def is_fp32(self) -> bool:
        return all(p == "fp32" for p in self.per_submodel.values())

    @property
    def needs_calibration(self) -> bool:
        return CALIBRATED in self.per_submodel.values()

    def quantized(self) -> list[str]:
        """Submodels that get something other than fp32, in SUBMODELS order."""
        return [name for name, value in self.per_submodel.items() if value != "fp32"]


def component_precision(plan: PrecisionPlan, submodel: str) -> PrecisionPlan:
    """The plan of a ControlNet or depth estimator folder (its one `submodel`): the UNet's precision in
    `plan` (a ControlNet is a copy of the UNet's encoder), `int8` as int8 weights: activation int8 is
    calibrated on UNet inputs only."""
    unet = plan["unet"]
    return PrecisionPlan({submodel: "int8-weights" if unet == CALIBRATED else unet})


def precision_for(spec: str | None, target: str | None) -> str:
    """The precision spec an export gets: `spec` when given, else `target`'s default, else fp32."""
    if target is not None and target not in TARGET_PRECISION:
        raise InvalidInputError(f"--target {target!r}: choose {', '.join(TARGET_PRECISION)}")
    if spec is not None:
        return spec
    return TARGET_PRECISION[target] if target else "fp32"


def parse_precision(spec: "str | PrecisionPlan | None") -> PrecisionPlan:
    """Parse a `--precision` spec (see the module docstring); raises InvalidInputError naming what is valid."""
    if isinstance(spec, PrecisionPlan):
        return spec
    text = (spec or "fp32").strip().lower()
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise InvalidInputError(f"--precision {spec!r} has an empty entry; write e.g. 'int8' or 'unet=int8,vae_decoder=fp16'")
    globals_ = [p for p in parts if "=" not in p]
    overrides = [p for p in parts if "=" in p]
    if len(globals_) > 1:
        raise InvalidInputError(
            f"--precision {spec!r} gives more than one global value ({', '.join(globals_)}); give one, "
            "then per-submodel overrides such as vae_decoder=fp32"
        )
    per_submodel = _global(globals_[0] if globals_ else "fp32", spec)
    seen = set()
    for item in overrides:
        name, _, value = (s.strip() for s in item.partition("="))
        if name not in SUBMODELS:
            raise InvalidInputError(f"--precision: unknown submodel {name!r}; submodels are {', '.join(SUBMODELS)}")
        if name in seen:
            raise InvalidInputError(f"--precision names {name} twice; name each submodel at most once")
        seen.add(name)
        _check_value(value, f"{name}={value}")
        if value == CALIBRATED and name != "unet":
            raise InvalidInputError(
                f"--precision {name}=int8: activation int8 is calibrated for the unet only; use {name}=int8-weights "
                "(int8 weights, fp32 activations) for the text encoder and VAE"
            )
        per_submodel[name] = value
    return PrecisionPlan(per_submodel)


def _global(value: str, spec) -> dict:
    _check_value(value, spec)
    if value == CALIBRATED:
        return dict(_GLOBAL_INT8)
    return {name: value for name in SUBMODELS}


def _check_value(value: str, where) -> None:
    if value not in PRECISIONS:
        raise InvalidInputError(
            f"--precision {where!r}: unknown precision {value!r}; choose {', '.join(PRECISIONS)}, optionally per "
            f"submodel ({', '.join(SUBMODELS)}), e.g. 'unet=int8,vae_decoder=fp16' or 'int8-weights,vae_decoder=fp32'"
        )
