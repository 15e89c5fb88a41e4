"""What edgesd reads from outside, checked in one place before anything uses it: manifests
(edgesd.json of every kind), the config.json values the runtime computes with, the parameters stored
in a shared image (--replay), hub repo ids and revisions, and the numbers of a call. Each is parsed
with a pydantic schema (strict: "8" is not 8, true is not 1, NaN and inf are not numbers); a wrong
value becomes one sentence naming the file, the field and what is allowed. LoRA files are checked
where they are read (lora.py). Imports nothing of edgesd above errors and limits."""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from edgesd.errors import InvalidInputError, ModelFolderError
from edgesd.formats import FORMATS
from edgesd.limits import MAX_GUIDANCE, MAX_IMAGES, MAX_SIDE, MAX_STEPS

FORMAT_VERSION = 1
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # SDXL's second (with its projection); a refiner has only it
SUBMODELS = (*TEXT_ENCODERS, "unet", "vae_encoder", "vae_decoder")  # every submodel a model folder may have
VAE_SUBMODELS = ("vae_encoder", "vae_decoder")
COMPONENT_SUBMODELS = {"vae": VAE_SUBMODELS, "controlnet": ("controlnet",),  # what a component folder of each kind has
                       "depth": ("depth_estimator",)}
SDXL_CONDITIONING = ("requires_aesthetics_score", "force_zeros_for_empty_prompt")  # diffusers' SDXL pipeline config

Finite = Annotated[float, Field(allow_inf_nan=False)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")]  # no folders, no '..'
Label = Annotated[str, StringConstraints(max_length=200)]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]


class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# -- manifests ---------------------------------------------------------------------------------------

class FileEntry(_Schema):
    bytes: int | None = Field(None, ge=0)
    sha256: Sha256 | None = None


class FormatEntry(_Schema):
    files: dict[FileName, FileEntry] = {}
    precision: Label | None = None
    method: Label | None = None


class SubmodelEntry(_Schema):
    formats: dict[Literal["onnx", "openvino"], FormatEntry]
    validation_max_abs_deviation: dict[str, Finite | None] = {}
    quantized_max_abs_deviation: dict[str, Finite | None] = {}


class Defaults(_Closed):
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: Finite | None = Field(None, ge=0, le=MAX_GUIDANCE)
    strength: Finite | None = Field(None, ge=0, le=1)


class Provenance(_Schema):
    source: Label | None = None
    revision: Label | None = None
    created: Label | None = None


class SdxlConditioning(_Closed):
    requires_aesthetics_score: bool = False  # a refiner's time ids: aesthetic score instead of the target size
    force_zeros_for_empty_prompt: bool = True  # no negative prompt: zeros instead of encoding ""


class ControlNetFit(_Closed):
    """What a ControlNet folder fits (besides its family): checked against a model before any weights load."""
    cross_attention_dim: int = Field(ge=1, le=8192)
    block_out_channels: list[Annotated[int, Field(ge=1, le=8192)]] = Field(min_length=1, max_length=8)
    residuals: int = Field(ge=2, le=64)  # down-block residuals it gives (the mid block's besides)
    vae_scale_factor: Literal[1, 2, 4, 8, 16, 32, 64]  # its control image is this many times the latents' size
    conditioning_channels: int = Field(3, ge=1, le=16)
    conditioning_channel_order: Literal["rgb", "bgr"] = "rgb"
    global_pool_conditions: bool = False


class DepthProcessing(_Closed):
    """A depth estimator's image processor (transformers' DPTImageProcessor settings), as edgesd.control.depth applies them."""
    do_resize: bool = True
    size: dict[Literal["height", "width"], Side]
    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = Field(1, ge=1, le=256)
    resample: Literal[0, 1, 2, 3, 4, 5] = 3  # PIL's filter numbers
    do_rescale: bool = True
    rescale_factor: Finite = Field(1 / 255, gt=0, le=1)
    do_normalize: bool = True
    image_mean: list[Finite] = Field(min_length=3, max_length=3)
    image_std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=3, max_length=3)
    do_pad: bool = False
    size_divisor: int | None = Field(None, ge=1, le=256)


class Manifest(_Schema):
    format_version: int = Field(ge=1, le=FORMAT_VERSION)
    kind: Literal["model", "vae", "controlnet", "depth"] = "model"
    family: Annotated[str, StringConstraints(max_length=40)] | None = None
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    latent_channels: int | None = Field(None, ge=1, le=64)  # these three: required but in ControlNet folders
    vae_scaling_factor: Finite | None = Field(None, gt=0, le=100)
    vae_scale_factor: Literal[1, 2, 4, 8, 16, 32, 64] | None = None
    sample_size: int | None = Field(None, ge=8, le=MAX_SIDE)
    unet_any_size: bool = False
    onnx_attention_fused: bool = False
    vae_encoder_output: Literal["latents", "moments"] | None = None
    defaults: Defaults = Defaults()
    conditioning: SdxlConditioning | None = None
    unet_controlnet_inputs: bool = False  # its UNet takes ControlNet residuals (edgesd export since ControlNets)
    controlnet: ControlNetFit | None = None
    depth: DepthProcessing | None = None
    submodels: dict[Literal[(*SUBMODELS, "controlnet", "depth_estimator")], SubmodelEntry]
    support_files: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.+-]{1,200}$")],
                        FileEntry] = {}  # tokenizer/, scheduler/ and config files: covered by hashes too
    provenance: Provenance = Provenance()

    @model_validator(mode="after")
    def _whole(self):
        needed = COMPONENT_SUBMODELS.get(self.kind) or (
            "text_encoder_2" if self.family == "sdxl" else "text_encoder", "unet", *VAE_SUBMODELS)
        missing = [name for name in needed if name not in self.submodels]
        if missing:
            raise ValueError(f"submodels lacks {', '.join(missing)}")
        allowed = COMPONENT_SUBMODELS.get(self.kind, SUBMODELS)
        if set(self.submodels) - set(allowed) or self.family != "sdxl" and "text_encoder_2" in self.submodels:
            raise ValueError(f"submodels has more than a {self.family or self.kind} folder has")
        latent = [name for name in ("latent_channels", "vae_scaling_factor", "vae_scale_factor") if getattr(self, name) is None]
        if self.kind not in ("controlnet", "depth") and latent:
            raise ValueError(f"{', '.join(latent)} missing")
        if (self.kind == "controlnet") != (self.controlnet is not None):
            raise ValueError("controlnet (what it fits) belongs to, and only to, a ControlNet folder")
        if (self.kind == "depth") != (self.depth is not None):
            raise ValueError("depth (its image processing) belongs to, and only to, a depth estimator folder")
        if self.kind == "model" and self.family is None:
            raise ValueError("family is missing")
        if any(part in (".", "..") for name in self.support_files for part in name.split("/")):
            raise ValueError("support_files names a file outside the folder")
        unlisted = [f"{name} ({fmt})" for name, entry in self.submodels.items() for fmt, spec in entry.formats.items()
                    if FORMATS[fmt].main_file not in spec.files]
        if unlisted:  # else the file would be neither checked nor hashed
            raise ValueError(f"submodels {', '.join(unlisted)} do not list their main file")
        return self


class UNetConfig(_Schema):
    """The UNet config.json values the runtime reads (memory estimate, sizes, LoRA block names)."""
    sample_size: int | list[int] = 64
    in_channels: int = Field(4, ge=1, le=64)
    block_out_channels: list[Annotated[int, Field(ge=1, le=8192)]] = Field(min_length=1, max_length=8)
    down_block_types: list[Label] = Field(min_length=1, max_length=8)
    layers_per_block: int | list[int] = 2
    attention_head_dim: int | list[int] | None = 8
    num_attention_heads: int | list[int] | None = None

    @model_validator(mode="after")
    def _sizes(self):
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels:
            raise ValueError(f"down_block_types has {len(self.down_block_types)} entries for {levels} block_out_channels")
        if self.attention_head_dim is None and self.num_attention_heads is None:
            raise ValueError("attention_head_dim or num_attention_heads must be given")
        for name in ("sample_size", "layers_per_block", "attention_head_dim", "num_attention_heads"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [] if value is None else [value]
            if not all(1 <= v <= 4096 for v in values) or (isinstance(value, list) and len(value) not in (
                    (2,) if name == "sample_size" else (levels,))):
                raise ValueError(f"{name} must be a positive integer up to 4096, or a list of one per "
                                 f"{'side' if name == 'sample_size' else 'level'}")
        return self


class VaeConfig(_Schema):
    block_out_channels: list[Annotated[int, Field(ge=1, le=8192)]] = Field(min_length=1, max_length=8)
    latent_channels: int = Field(4, ge=1, le=64)
    scaling_factor: Finite = Field(0.18215, gt=0, le=100)
    sample_size: Side | Annotated[list[Side], Field(min_length=2, max_length=2)] = 512
    mid_block_add_attention: bool = True
    force_upcast: bool = False  # overflows in fp16 (SDXL's): run in fp32


class SchedulerConfig(_Schema):
    """The scheduler_config.json values the numpy schedulers compute with (what each port supports
    of the named choices is said by the port itself)."""
    class_name: Label | None = Field(None, alias="_class_name")
    num_train_timesteps: int = Field(1000, ge=2, le=10_000)
    beta_start: Finite = Field(0.0001, gt=0, lt=1)
    beta_end: Finite = Field(0.02, gt=0, lt=1)
    beta_schedule: Label = "linear"
    trained_betas: list[Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]] | None = Field(None, max_length=10_000)
    prediction_type: Label = "epsilon"
    timestep_spacing: Label | None = None
    steps_offset: int = Field(0, ge=0, le=1)  # diffusers' SD configs: 0 or 1 (more skips past the schedule's end)
    clip_sample: bool | None = None
    clip_sample_range: Finite = Field(1.0, gt=0, le=1e6)
    sample_max_value: Finite = Field(1.0, gt=0, le=1e6)
    dynamic_thresholding_ratio: Finite = Field(0.995, gt=0, le=1)
    set_alpha_to_one: bool | None = None
    thresholding: bool | None = None
    rescale_betas_zero_snr: bool | None = None
    use_karras_sigmas: bool | None = None
    use_exponential_sigmas: bool | None = None
    sigma_min: Finite | None = Field(None, gt=0, le=1e6)
    sigma_max: Finite | None = Field(None, gt=0, le=1e6)
    timestep_scaling: Finite = Field(10.0, gt=0, le=1e6)
    original_inference_steps: int = Field(50, ge=1, le=10_000)
    solver_order: int = Field(2, ge=1, le=3)

    @model_validator(mode="after")
    def _betas(self):
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(f"trained_betas has {len(self.trained_betas)} values for {self.num_train_timesteps} "
                             "num_train_timesteps")
        return self


def check_manifest(data, source) -> dict:
    """edgesd.json's contents -> the checked manifest (defaults filled in), or ModelFolderError."""
    if isinstance(data, dict) and isinstance(data.get("format_version"), int) and data["format_version"] > FORMAT_VERSION:
        raise ModelFolderError(f"{source} has model-folder format {data['format_version']}; this edgesd reads up to "
                               f"{FORMAT_VERSION}: upgrade edgesd")
    return _checked(Manifest, data, source, "re-export the folder with `edgesd export`").model_dump(exclude_none=True)


def check_config(schema: type[BaseModel], data, source) -> dict:
    """A submodel's config.json -> its contents, once the values edgesd reads are checked."""
    _checked(schema, data, source, "re-export or re-download the model")
    return data


# -- a call's settings, and what an image stores (--replay) ---------------------------------------------

Prompt = Annotated[str, StringConstraints(max_length=100_000)]
Revision = Annotated[str, StringConstraints(max_length=255)]


class Settings(_Schema):
    """The numbers of a call, from the API, the CLI or a replayed image (None: the model's default)."""
    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    strength: Finite | None = Field(None, ge=0, le=1)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: Finite | None = Field(None, ge=0, le=MAX_GUIDANCE)
    seed: int | None = Field(None, ge=0, lt=2**64)
    num_images: int | None = Field(None, ge=1, le=MAX_IMAGES)
    scheduler: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_ +.-]{0,99}$")] | None = None  # or a sampler name


def check_settings(**values) -> None:
    """InvalidInputError naming the option and what is allowed, e.g. for guidance_scale=inf."""
    values = {k: v.item() if hasattr(v, "item") and hasattr(v, "dtype") else v for k, v in values.items()}  # numpy scalars
    values = {k: int(v) if isinstance(v, float) and k in ("num_inference_steps", "num_images", "seed") and v.is_integer()
              else v for k, v in values.items()}  # 4.0 steps is 4 steps
    try:
        Settings.model_validate(values)
    except ValidationError as e:
        raise InvalidInputError(describe(e, option=True)) from None


Size = Annotated[list[Annotated[int, Field(ge=1, le=MAX_SIDE)]], Field(min_length=2, max_length=2)]
Crop = Annotated[list[Annotated[int, Field(ge=0, le=MAX_SIDE)]], Field(min_length=2, max_length=2)]


class FamilyOptions(_Schema):
    """SDXL's call options, by diffusers' names (sizes and crops as (height, width))."""
    prompt_2: Prompt | None = None
    negative_prompt_2: Prompt | None = None
    original_size: Size | None = None
    target_size: Size | None = None
    crops_coords_top_left: Crop | None = None
    negative_original_size: Size | None = None
    negative_target_size: Size | None = None
    negative_crops_coords_top_left: Crop | None = None
    aesthetic_score: Finite | None = Field(None, ge=0, le=10)
    negative_aesthetic_score: Finite | None = Field(None, ge=0, le=10)
    denoising_start: Finite | None = Field(None, gt=0, lt=1)
    denoising_end: Finite | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.denoising_start is not None and self.denoising_end is not None and self.denoising_start >= self.denoising_end:
            raise ValueError(f"denoising_start {self.denoising_start} must be below denoising_end {self.denoising_end}")
        return self


def check_family_options(values: dict) -> dict:
    """A family's call options (tuples as lists, as they are stored), or InvalidInputError naming the option."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    try:
        FamilyOptions.model_validate(values)
    except ValidationError as e:
        raise InvalidInputError(describe(e, option=True)) from None
    return values


CONTROL_OPTIONS = ("controlnet_conditioning_scale", "guess_mode", "control_guidance_start", "control_guidance_end")
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class ControlOptions(_Closed):
    """diffusers' ControlNet call options, one value per ControlNet (a single value: the same for all)."""
    controlnet_conditioning_scale: list[Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]] = Field(max_length=16)
    guess_mode: bool = False
    control_guidance_start: list[Fraction] = Field(max_length=16)
    control_guidance_end: list[Fraction] = Field(max_length=16)

    @model_validator(mode="after")
    def _ordered(self):
        for start, end in zip(self.control_guidance_start, self.control_guidance_end):
            if start >= end:
                raise ValueError(f"control_guidance_start {start} must be below control_guidance_end {end}")
        return self


def check_control_options(controlnets: int, default_scale: float, **given) -> dict:
    """The ControlNet options of a call with `controlnets` loaded, each a list of one value per
    ControlNet (diffusers' defaults: the task's scale, guidance from 0 to 1, no guess mode); given
    without a ControlNet, or with a list of another length, an InvalidInputError."""
    given = {k: v for k, v in given.items() if v is not None}
    if not controlnets:
        if given:
            raise InvalidInputError(f"{', '.join(given)}: for ControlNets; load one (controlnet=FOLDER, --controlnet)")
        return {}
    values = {"controlnet_conditioning_scale": default_scale, "control_guidance_start": 0.0, "control_guidance_end": 1.0}
    values.update(given)
    for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
        value = values[name]
        if isinstance(value, (list, tuple)):
            if len(value) != controlnets:
                raise InvalidInputError(f"{name} has {len(value)} values for {controlnets} ControlNet(s): give one, or one each")
            values[name] = list(value)
        else:
            values[name] = [value] * controlnets
        values[name] = [v.item() if hasattr(v, "item") else float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                        for v in values[name]]
    try:
        return ControlOptions.model_validate(values).model_dump()
    except ValidationError as e:
        raise InvalidInputError(describe(e, option=True)) from None


class StoredControlNet(_Schema):
    folder: Label
    manifest_sha256: Sha256 | Literal[""]


class StoredLora(_Schema):
    file: Label
    sha256: Sha256
    weight: Finite


class StoredVae(_Schema):
    folder: Label
    manifest_sha256: Sha256 | Literal[""]
    replaces: list[Literal["vae_encoder", "vae_decoder"]] = Field(min_length=1, max_length=2)


class Extension(_Closed):
    left: int = Field(0, ge=0, le=MAX_SIDE)
    right: int = Field(0, ge=0, le=MAX_SIDE)
    top: int = Field(0, ge=0, le=MAX_SIDE)
    bottom: int = Field(0, ge=0, le=MAX_SIDE)
    overlap: int | None = Field(None, ge=0, le=MAX_SIDE)


MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")  # what inpainting starts the masked area from


class StoredParameters(Settings, FamilyOptions):
    """What an image edgesd wrote carries (outputs.py writes it; --replay reads it back)."""
    controlnet_conditioning_scale: list[Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]] | None = Field(None, max_length=16)
    guess_mode: bool | None = None
    control_guidance_start: list[Fraction] | None = Field(None, max_length=16)
    control_guidance_end: list[Fraction] | None = Field(None, max_length=16)
    controlnets: list[StoredControlNet] = Field([], max_length=16)
    control_sha256: list[Sha256] = Field([], max_length=16)
    index: int = Field(0, ge=0, lt=MAX_IMAGES)
    size: list[Annotated[int, Field(ge=8, le=MAX_SIDE)]] | None = Field(None, min_length=2, max_length=2)
    extension: Extension | None = None
    padding_mask_crop: int | None = Field(None, ge=0, le=MAX_SIDE)
    masked_content: Literal[MASKED_CONTENT] | None = None
    task: Literal["img2img", "inpaint", "outpaint"] | None = None
    model: Label | None = None
    hub_revision: Revision | None = None
    backend: Literal["onnxruntime", "openvino"] | None = None
    device: Label | None = None
    weights_precision: Label | None = None
    inference_precision: Label | None = None
    edgesd_version: Label | None = None
    manifest_sha256: Sha256 | Literal[""] | None = None
    input_sha256: Sha256 | None = None
    mask_sha256: Sha256 | None = None
    vae: StoredVae | None = None
    loras: list[StoredLora] = Field([], max_length=64)

    @model_validator(mode="after")
    def _consistent(self):
        if self.num_images is not None and self.index >= self.num_images:
            raise ValueError(f"index {self.index} is not an image of a batch of {self.num_images}")
        if self.hub_revision is not None:
            hub_revision(self.hub_revision)
        return self


def check_parameters(data, source) -> dict:
    """Parameters read from an image -> the checked ones (only the keys given), or InvalidInputError."""
    checked = _checked(StoredParameters, data, source, "replay an image edgesd wrote, or give the options yourself",
                       error=InvalidInputError)
    return checked.model_dump(exclude_unset=True)


# -- hub ids and revisions ----------------------------------------------------------------------------

_REVISION_PART = re.compile(r"[A-Za-z0-9_.+@-]+")


def hub_revision(revision: str) -> str:
    """A branch, tag or commit: never a path. huggingface_hub writes refs/<revision> in its cache, so
    '..', absolute paths, backslashes and empty parts are refused before it sees them."""
    parts = revision.split("/") if isinstance(revision, str) else [""]
    if not 0 < len(revision) <= 255 or any(not _REVISION_PART.fullmatch(p) or p in (".", "..") for p in parts) \
            or revision.endswith((".lock", ".")):
        raise InvalidInputError(f"revision {str(revision)[:80]!r} is not a branch, tag or commit name (letters, digits, "
                                "'._+@-' and '/' between parts; no '..', no leading '/', no backslash)")
    return revision


def hub_repo_id(repo_id: str) -> str:
    """OWNER/REPO as huggingface_hub accepts it (its own validator), or InvalidInputError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InvalidInputError(f"{repo_id!r} is neither a local folder nor a hub repo id: {str(e).splitlines()[0]}") from None
    return repo_id


# -- helpers -------------------------------------------------------------------------------------------

def _checked(schema: type[BaseModel], data, source, fix: str, error: type = ModelFolderError) -> BaseModel:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise error(f"{source}: {describe(e)}; {fix}") from None


def describe(error: ValidationError, option: bool = False) -> str:
    """pydantic's first complaint as one phrase: where (a field, or an `option`'s name), what, and the value found."""
    first = error.errors(include_url=False)[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check of the whole (its message names the fields)
        return message
    found = first.get("input")
    shown = "" if isinstance(found, (dict, list)) or first["type"] == "missing" else f", got {ascii(str(found)[:60])[1:-1]}"
    where = ".".join(ascii(str(part)[:60])[1:-1] for part in first["loc"]  # a key from the file may hold a newline
                     if not isinstance(part, str) or part not in _UNION_BRANCHES)
    return f"{'' if option else 'field '}{where}: {message[0].lower()}{message[1:]}{shown}"


_UNION_BRANCHES = {"int", "float", "str", "bool", "list[int]", "constrained-str", "literal['']"}  # pydantic's names of a union's arms
