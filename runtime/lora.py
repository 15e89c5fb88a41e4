"""LoRA files, read and merged into a model's weights when a pipeline loads (no re-export).

Written by hand because the runtime is torch-free: diffusers/peft merge LoRAs in torch. The files'
headers are checked by safetensors, their tensors read from their bytes here; each engine session
(sessions/onnxruntime.py, openvino.py) finds the weights in its own graph and asks `LoraMerge.deltas`
what to add to them.

Formats read:
- diffusers/peft: `unet.<module>.lora_A.weight` / `.lora_B.weight` (and `text_encoder.`), diffusers'
  older `.lora.down/.lora.up` and `.lora_linear_layer.down/up`; alpha from the file's
  `lora_adapter_metadata` (lora_alpha, alpha_pattern) or `<module>.alpha`, else alpha = rank;
- kohya/A1111: `lora_unet_<module with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_te_` (or `lora_te1_`) for the text encoder, `lora_te2_` for SDXL's second, and the original SD/SDXL
  UNet's block names (`input_blocks_4_1_...`, `middle_block_1_...`, `output_blocks_...`, `in_layers_2`,
  `label_emb_0_0` ...).

The delta of a module is weight x alpha / rank x up @ down, as diffusers fuses it (fuse_lora with
lora_scale, or set_adapters' weights); several LoRAs add up.

Refused with a LoraError naming the file and the key or field (a hostile or broken file never ends in
a traceback, nor in weights that make black images): headers safetensors rejects; tensors that are not
float16/bfloat16/float32/float64, or hold NaN/inf (also once in float32, which deltas are computed in);
down/up matrices that are not 2-d (linear) or 4-d (conv) with every side >= 1 (so rank >= 1), or
that do not fit together; alphas that are not one finite number within ±MAX_ALPHA; weights beyond
±MAX_WEIGHT; adapter metadata that is not a JSON object of peft's LoraConfig fields with the right
types (_AdapterConfig); and, when merging, weights a delta would take beyond float16's range."""

import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from edgesd.errors import InvalidInputError
from edgesd.model_folder import sha256

SUBMODELS = ("text_encoder", "text_encoder_2", "unet")  # the submodels LoRAs change (text_encoder_2: SDXL's)
QUANTIZED = "quantized (int8)"  # what engines say of a weight that is not stored as floats
# A LoRA's weight: users set -2..2, slider LoRAs up to about ±10; beyond ±100 no image survives it.
MAX_WEIGHT = 100.0
# An alpha: trained ones are about the rank or below (ranks are at most a few thousand), so ±1e6 refuses
# only nonsense, and keeps weight x alpha / rank (<= 1e8) far inside float32, which deltas are computed in.
MAX_ALPHA = 1e6
# The largest merged weight: float16's; engines compute in fp16 on GPUs, where a larger one is inf.
MAX_MERGED = float(np.finfo(np.float16).max)
_DIFFUSERS = re.compile(r"(unet|text_encoder|text_encoder_2)\.(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|"
                        r"lora_linear_layer\.down|lora_linear_layer\.up)(\.default)?\.weight")
_KOHYA = re.compile(r"(lora_unet|lora_te|lora_te1|lora_te2)_(.+?)\.(lora_down|lora_up)\.weight")
_ALPHA = re.compile(r"(?:(unet|text_encoder|text_encoder_2)\.(.+)|(lora_unet|lora_te|lora_te1|lora_te2)_(.+))\.alpha")
_SUBMODEL = {"unet": "unet", "lora_unet": "unet", "text_encoder": "text_encoder", "lora_te": "text_encoder",
             "lora_te1": "text_encoder", "text_encoder_2": "text_encoder_2", "lora_te2": "text_encoder_2"}
_DOWN = ("lora_A", "lora.down", "lora_linear_layer.down", "lora_down")
_FLOATS = {"F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8"}  # safetensors' dtype -> numpy's for its bytes
_Alpha = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ALPHA, le=MAX_ALPHA)]


class LoraError(InvalidInputError):
    """A LoRA file that cannot be applied to this model as it is."""


class _AdapterConfig(BaseModel):
    """The fields of peft's LoraConfig that edgesd uses, as diffusers stores them for one submodel."""
    model_config = ConfigDict(extra="ignore")
    lora_alpha: _Alpha = 8.0  # peft's default
    alpha_pattern: dict[str, _Alpha] | None = None
    use_rslora: StrictBool = False


@dataclass
class Layer:
    """One LoRA layer: delta = scale x up @ down; `name` is its module as the file spells it."""
    name: str
    underscored: bool  # kohya: dots written as underscores
    down: np.ndarray | None = None  # (rank, in[, kh, kw])
    up: np.ndarray | None = None  # (out, rank[, 1, 1])
    alpha: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of its delta: (out, in[, kh, kw])."""
        return (self.up.shape[0], *self.down.shape[1:])

    def delta(self, weight: float) -> np.ndarray:
        """The change to the module's weight, in torch's layout (out, in[, kh, kw]), float32."""
        rank = self.down.shape[0]
        alpha = rank if self.alpha is None else self.alpha
        up = self.up.astype(np.float32).reshape(self.up.shape[0], rank)
        down = self.down.astype(np.float32).reshape(rank, -1)
        with np.errstate(over="ignore", invalid="ignore"):  # add_delta refuses weights that overflow
            delta = up @ down
            delta *= np.float32(weight * alpha / rank)
        return delta.reshape(self.shape)


@dataclass
class Lora:
    path: Path
    weight: float
    sha256: str
    layers: dict[str, dict[str, Layer]] = field(default_factory=dict)  # submodel -> name -> layer

    @property
    def record(self) -> dict:
        """What outputs store about it (the file's name, not its path: images are shared)."""
        return {"file": self.path.name, "sha256": self.sha256, "weight": self.weight}


def read_lora(path: str | Path, weight: float = 1.0) -> Lora:
    """Read a LoRA file (.safetensors) of any format above; layers of another family are an error."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    if path.suffix != ".safetensors":
        raise LoraError(f"LoRA {path.name}: only .safetensors files are read (pickled .pt/.ckpt files can run code)")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not abs(weight) <= MAX_WEIGHT:
        raise LoraError(f"LoRA {path.name}: its weight must be a finite number within ±{MAX_WEIGHT:g}, got {weight!r}")
    metadata, entries = _read_header(path)
    lora = Lora(path, float(weight), sha256(path))
    parsed = {key: _parse_key(key) for key in entries}
    unknown = [key for key, parts in parsed.items() if parts is None]
    if unknown:
        kinds = "LyCORIS (LoHa, LoKr, Tucker lora_mid), DoRA or full-weight layers, which edgesd does not merge" if any(
            re.search(r"hada_|lokr_|lora_mid|dora_scale|magnitude|\.diff(_b)?$", k) for k in unknown) \
            else "not LoRA layers edgesd knows"
        raise LoraError(f"LoRA {path.name} has keys that are {kinds}: {_listing(unknown)}")
    for key, (submodel, name, part, underscored) in parsed.items():
        layer = lora.layers.setdefault(submodel, {}).setdefault(name, Layer(name, underscored))
        if getattr(layer, part) is not None:
            raise LoraError(f"LoRA {path.name} has {_shown(name)}'s {part} twice (under two names)")
        tensor = _checked_tensor(path, key, part, _read_tensor(path, key, entries[key]))
        setattr(layer, part, float(tensor.reshape(-1)[0]) if part == "alpha" else tensor)
    for submodel, layers in lora.layers.items():
        incomplete = [name for name, layer in layers.items() if layer.down is None or layer.up is None]
        if incomplete:
            raise LoraError(f"LoRA {path.name} is incomplete: no down/up pair for {_listing(incomplete)}")
        for name, layer in layers.items():
            if layer.up.shape[1] != layer.down.shape[0] or any(side != 1 for side in layer.up.shape[2:]):
                raise LoraError(f"LoRA {path.name}: the down {layer.down.shape} and up {layer.up.shape} matrices of "
                                f"{_shown(name)} do not fit together (a down of (rank, in[, kh, kw]) takes an up of "
                                "(out, rank[, 1, 1]))")
        _apply_metadata_alphas(layers, _adapter_config(metadata, submodel, path))
    if not lora.layers:
        raise LoraError(f"LoRA {path.name} has no layers")
    return lora


def _parse_key(key: str) -> tuple[str, str, str, bool] | None:
    """(submodel, module name, "down"/"up"/"alpha", underscored) of a key in one of the formats above."""
    if match := _DIFFUSERS.fullmatch(key):
        return match[1], match[2], "down" if match[3] in _DOWN else "up", False
    if match := _KOHYA.fullmatch(key):
        return _SUBMODEL[match[1]], match[2], "down" if match[3] in _DOWN else "up", True
    if match := _ALPHA.fullmatch(key):
        return _SUBMODEL[match[1] or match[3]], match[2] or match[4], "alpha", match[3] is not None
    return None


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, list[int], int, int]]]:
    """(metadata, key -> (dtype, shape, start, end) of its bytes in the file). safetensors checks the
    header first (its length, JSON, metadata of strings, dtypes, shapes, and offsets that match them and
    tile the file), so what is read here from the same header can be trusted."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        with open(path, "rb") as raw:
            size = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(size))
        header.pop("__metadata__", None)
        entries = {key: (entry["dtype"], entry["shape"], *(8 + size + offset for offset in entry["data_offsets"]))
                   for key, entry in header.items()}
    except (SafetensorError, OSError, ValueError, LookupError, TypeError, AttributeError) as e:
        raise LoraError(f"LoRA {path.name} cannot be read as safetensors: {_shown(str(e), 200)}") from None
    return metadata, entries


def _read_tensor(path: Path, key: str, entry: tuple[str, list[int], int, int]) -> np.ndarray:
    """A tensor from its bytes; bf16 (numpy has none, and kohya often saves in it) widened to float32."""
    dtype, shape, start, end = entry
    if dtype not in _FLOATS:
        kind = re.sub(r"^(BF|I|U|F|C)(?=\d)", lambda m: {"BF": "bfloat", "I": "int", "U": "uint", "F": "float",
                                                         "C": "complex"}[m[1]], dtype).lower()
        raise LoraError(f"LoRA {path.name}: {_shown(key)} holds {kind} values; LoRA weights are floats (float16, "
                        "bfloat16, float32 or float64)")
    try:
        with open(path, "rb") as raw:
            raw.seek(start)
            tensor = np.frombuffer(raw.read(end - start), _FLOATS[dtype]).reshape(shape)
    except (OSError, ValueError) as e:  # the file changed since its header was checked
        raise LoraError(f"LoRA {path.name} cannot be read as safetensors: {_shown(key)}: {e}") from None
    return (tensor.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else tensor


def _checked_tensor(path: Path, key: str, part: str, tensor: np.ndarray) -> np.ndarray:
    """`tensor` if it is finite (in float32 too) and of a shape its part ("down", "up", "alpha") can have."""
    with np.errstate(over="ignore"):
        finite = np.isfinite(tensor.astype(np.float32)).all()
    if not finite:
        raise LoraError(f"LoRA {path.name}: {_shown(key)} holds NaN/inf values (or values beyond float32's range, "
                        "which edgesd computes LoRAs in); LoRA weights must be finite")
    if part == "alpha":
        if tensor.size != 1:
            raise LoraError(f"LoRA {path.name}: {_shown(key)} should hold one number, it has shape {tensor.shape}")
        if not abs(alpha := float(tensor.reshape(-1)[0])) <= MAX_ALPHA:
            raise LoraError(f"LoRA {path.name}: {_shown(key)} is {alpha:g}; alphas are within ±{MAX_ALPHA:,.0f}")
    elif tensor.ndim not in (2, 4) or 0 in tensor.shape:
        raise LoraError(f"LoRA {path.name}: {_shown(key)} has shape {tensor.shape}; LoRA {part} matrices are 2-d "
                        "(linear) or 4-d (conv), with every side at least 1")
    return tensor


def _adapter_config(metadata: dict[str, str], submodel: str, path: Path) -> _AdapterConfig | None:
    """peft's LoraConfig for `submodel` as diffusers stores it (keys prefixed with the submodel), checked."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise LoraError(f"LoRA {path.name}: its lora_adapter_metadata is not JSON of an object (peft's LoraConfig "
                        "fields, prefixed with the submodel)")
    prefix = f"{submodel}."
    config = {key[len(prefix):]: value for key, value in config.items() if key.startswith(prefix)}
    if not config:
        return None
    try:
        checked = _AdapterConfig.model_validate(config)
    except ValidationError as e:
        error = e.errors()[0]
        where = f"{submodel}.{error['loc'][0]}" + "".join(f"[{part!r}]" for part in error["loc"][1:])
        raise LoraError(f"LoRA {path.name}: its lora_adapter_metadata's {_shown(where)} is "
                        f"{_shown(repr(error['input']), 40)}: {error['msg'][0].lower()}{error['msg'][1:]}") from None
    if checked.use_rslora:
        raise LoraError(f"LoRA {path.name} is rank-stabilized (use_rslora), which edgesd does not merge")
    return checked


def _apply_metadata_alphas(layers: dict[str, Layer], config: _AdapterConfig | None) -> None:
    """peft's alpha: alpha_pattern's entry whose key ends the module's name, else lora_alpha (peft's
    default 8 when the config leaves it out). `.alpha` tensors in the file come first."""
    if config is None:
        return
    patterns = config.alpha_pattern or {}
    for name, layer in layers.items():
        if layer.alpha is not None:
            continue
        matched = [alpha for pattern, alpha in patterns.items() if re.fullmatch(rf"(.*\.)?({re.escape(pattern)})", name)]
        layer.alpha = matched[0] if matched else config.lora_alpha


def _listing(names: Iterable[str], most: int = 6) -> str:
    names = sorted(names)
    return ", ".join(map(_shown, names[:most])) + (f" and {len(names) - most} more" if len(names) > most else "")


def _shown(text: str, most: int = 80) -> str:
    """A name from a file, fit for a one-line message: escaped to printable ASCII, cut at `most` characters."""
    text = ascii(text)[1:-1]
    return text if len(text) <= most else text[:most - 3] + "..."


class LoraMerge:
    """The layers of several LoRAs for one submodel, matched to its graph's modules by a session."""

    def __init__(self, submodel: str, loras: list[Lora], layers_per_block: int = 2):
        self.submodel = submodel
        self.loras = [lora for lora in loras if lora.layers.get(submodel)]
        self.layers_per_block = layers_per_block

    def __bool__(self) -> bool:
        return bool(self.loras)

    def deltas(self, modules: dict[str, tuple | str]) -> Iterator[tuple[str, np.ndarray]]:
        """(module, summed delta in torch's layout) for every module a LoRA changes, one at a time
        (so at most one delta is held). `modules`: the graph's module -> its weight's shape in
        torch's layout (out, in[, kh, kw]), or why its weight cannot take a delta ("quantized (int8)")."""
        for module, layers in self.targets(modules).items():
            total = layers[0][1].delta(layers[0][0].weight)
            for lora, layer in layers[1:]:
                with np.errstate(over="ignore", invalid="ignore"):
                    total += layer.delta(lora.weight).reshape(total.shape)
            yield module, total

    def targets(self, modules: dict[str, tuple | str]) -> dict[str, list[tuple[Lora, Layer]]]:
        """module -> the (LoRA, layer)s that change it; a layer that matches no module, or one whose weight cannot
        take it (quantized, or of another shape), is an error naming them."""
        underscored = {module.replace(".", "_"): module for module in modules}
        targets: dict[str, list[tuple[Lora, Layer]]] = {}
        for lora in self.loras:
            unmatched = []
            for name, layer in lora.layers[self.submodel].items():
                module = self._module(name, layer.underscored, modules, underscored)
                if module is None:
                    unmatched.append(name)
                elif any(other is lora for other, _ in targets.get(module, [])):
                    raise LoraError(f"LoRA {lora.path.name} changes {module} twice (under two names); edgesd does not "
                                    "guess which one is meant")
                else:
                    targets.setdefault(module, []).append((lora, layer))
            if unmatched:
                raise LoraError(f"LoRA {lora.path.name} does not fit this model: {len(unmatched)} {self.submodel} "
                                f"layer(s) match no weight of it ({_listing(unmatched)}); is it a LoRA for another "
                                "model family?")
        blocked = [module for module in targets if isinstance(modules[module], str)]
        quantized = [module for module in blocked if modules[module] == QUANTIZED]
        if quantized:
            raise LoraError(f"LoRAs merge into float weights, but this folder's {self.submodel} is {QUANTIZED} "
                            f"({_listing(quantized)}); use a folder exported without quantization (edgesd export "
                            "--precision fp32 or fp16)")
        if blocked:
            raise LoraError(f"a LoRA changes {blocked[0]}, whose weight in this folder's {self.submodel} "
                            f"{modules[blocked[0]]}: edgesd cannot change it alone")
        for module, layers in targets.items():
            shape = modules[module]
            for _, layer in layers:
                if layer.shape[0] != shape[0] or np.prod(layer.shape) != np.prod(shape):
                    raise LoraError(f"LoRA layer {module} has shape {layer.shape}, the model's weight {tuple(shape)}: "
                                    "the LoRA is for another model")
        return targets

    def _module(self, name: str, underscored: bool, modules: dict, by_underscored: dict) -> str | None:
        if not underscored:
            return name if name in modules else None
        if name in by_underscored:
            return by_underscored[name]
        for candidate in _from_original_unet(name, self.layers_per_block):
            if candidate in by_underscored:
                return by_underscored[candidate]
        return None


_INNER = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
          "skip_connection": "conv_shortcut", "op": "conv"}
_TOP = {"input_blocks_0_0": "conv_in", "out_2": "conv_out", "time_embed_0": "time_embedding.linear_1",
        "time_embed_2": "time_embedding.linear_2", "label_emb_0_0": "add_embedding.linear_1",  # SDXL's pooled text
        "label_emb_0_2": "add_embedding.linear_2"}  # and time ids' embedding


def _from_original_unet(name: str, layers_per_block: int) -> list[str]:
    """The diffusers modules (underscored, as kohya writes them) that a name in the original SD UNet's
    naming may stand for, most likely first."""
    if name in _TOP:
        return [_TOP[name].replace(".", "_")]
    if match := re.fullmatch(r"middle_block_(\d+)_(.+)", name):
        kind, i, j, rest = "middle_block", int(match[1]), 0, match[2]
    elif match := re.fullmatch(r"(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)", name):
        kind, i, j, rest = match[1], int(match[2]), int(match[3]), match[4]
    else:
        return []
    per = layers_per_block + 1
    if kind == "middle_block":
        parts = [f"mid_block.{['resnets.0', 'attentions.0', 'resnets.1'][i]}"] if i < 3 else []
    elif kind == "input_blocks":
        block, layer = (i - 1) // per, (i - 1) % per
        if layer == layers_per_block:  # a block's last entry is its downsampler
            parts = [f"down_blocks.{block}.downsamplers.0"]
        else:
            parts = [f"down_blocks.{block}.{['resnets', 'attentions'][j]}.{layer}"] if j < 2 else []
    else:
        block, layer = i // per, i % per
        inner = {0: [f"resnets.{layer}"], 1: [f"attentions.{layer}", "upsamplers.0"], 2: ["upsamplers.0"]}.get(j, [])
        parts = [f"up_blocks.{block}.{part}" for part in inner]
    return [f"{part}.{_INNER.get(rest, rest)}".replace(".", "_") for part in parts]


def shared_by(weights: dict[str, tuple], modules: dict[str, tuple | str]) -> None:
    """Mark modules whose weight (`weights`: module -> (weight's name, ...)) another module uses too
    (exporters merge identical initializers): changing it would change both."""
    users: dict[str, list[str]] = {}
    for module, (name, *_) in weights.items():
        users.setdefault(name, []).append(module)
    for sharing in users.values():
        for module in sharing if len(sharing) > 1 else ():
            modules[module] = f"is shared with {', '.join(m for m in sharing if m != module)}"


def add_delta(base: np.ndarray, delta: np.ndarray, transposed: bool, module: str) -> np.ndarray:
    """base + delta computed in float32, returned in base's dtype. `transposed`: the graph stores the
    weight as (in, out), as torch.onnx does for MatMul; a delta whose shape does not fit is an error, and
    so is one that takes the weight beyond ±MAX_MERGED (finite LoRA values can still multiply to inf)."""
    delta = delta.reshape(delta.shape[0], -1)
    if transposed:
        delta = delta.T
    if delta.size != base.size or delta.shape[0] != base.shape[0]:
        raise LoraError(f"LoRA layer {module} has shape {delta.shape}, the model's weight {base.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        merged = base.astype(np.float32) + delta.reshape(base.shape)
    if not np.all(np.abs(merged) <= MAX_MERGED):
        raise LoraError(f"the LoRAs take the weight of {module} beyond ±{MAX_MERGED:g} (float16's range) or to NaN; "
                        "lower their weights, or leave out the LoRA whose values are that large")
    return merged.astype(base.dtype)


def module_of(node_name: str) -> str | None:
    """The torch module a graph node belongs to, from the names exporters give nodes: torch.onnx's
    `/down_blocks.0/attentions.0/.../to_q/MatMul` (also in IR converted from ONNX, with suffixes such
    as `/WithoutBiases`) and OpenVINO's PyTorch frontend's `__module.down_blocks.0.....to_q/aten::linear/MatMul`."""
    if node_name.startswith("__module."):
        return node_name[len("__module."):].split("/")[0]
    if node_name.startswith("/"):
        parts = []
        for part in node_name[1:].split("/"):
            if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.\d+)?", part):
                break
            parts.append(part)
        return ".".join(parts) or None
    return None
