"""LoRA files, read and merged into a model's weights when a pipeline loads (no re-export).

Written by hand because the runtime is torch-free: diffusers/peft merge LoRAs in torch. The files
are read with safetensors' numpy API; each engine session (sessions/onnxruntime.py, openvino.py)
finds the weights in its own graph and asks `LoraMerge.deltas` what to add to them.

Formats read:
- diffusers/peft: `unet.<module>.lora_A.weight` / `.lora_B.weight` (and `text_encoder.`), diffusers'
  older `.lora.down/.lora.up` and `.lora_linear_layer.down/up`; alpha from the file's
  `lora_adapter_metadata` (lora_alpha, alpha_pattern) or `<module>.alpha`, else alpha = rank;
- kohya/A1111: `lora_unet_<module with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_te_` (or `lora_te1_`) for the text encoder, and the original SD UNet's block names
  (`input_blocks_4_1_...`, `middle_block_1_...`, `output_blocks_...`, `in_layers_2` ...).

The delta of a module is weight x alpha / rank x up @ down, as diffusers fuses it (fuse_lora with
lora_scale, or set_adapters' weights); several LoRAs add up."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgesd.errors import InvalidInputError
from edgesd.model_folder import sha256

SUBMODELS = ("text_encoder", "unet")  # the submodels LoRAs change
QUANTIZED = "quantized (int8)"  # what engines say of a weight that is not stored as floats
_DIFFUSERS = re.compile(r"(unet|text_encoder|text_encoder_2)\.(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|"
                        r"lora_linear_layer\.down|lora_linear_layer\.up)(\.default)?\.weight")
_KOHYA = re.compile(r"(lora_unet|lora_te|lora_te1|lora_te2)_(.+?)\.(lora_down|lora_up)\.weight")
_ALPHA = re.compile(r"(?:(unet|text_encoder|text_encoder_2)\.(.+)|(lora_unet|lora_te|lora_te1|lora_te2)_(.+))\.alpha")
_SUBMODEL = {"unet": "unet", "lora_unet": "unet", "text_encoder": "text_encoder", "lora_te": "text_encoder",
             "lora_te1": "text_encoder", "text_encoder_2": "text_encoder_2", "lora_te2": "text_encoder_2"}
_DOWN = ("lora_A", "lora.down", "lora_linear_layer.down", "lora_down")


class LoraError(InvalidInputError):
    """A LoRA file that cannot be applied to this model as it is."""


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
        raise LoraError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise LoraError(f"LoRA {path.name}: only .safetensors files are read (pickled .pt/.ckpt files can run code)")
    if not np.isfinite(weight):
        raise LoraError(f"LoRA {path.name}: its weight must be a finite number, got {weight}")
    metadata, tensors = _read_tensors(path)
    lora = Lora(path, float(weight), sha256(path))
    unknown = []
    for key, tensor in tensors.items():
        if match := _DIFFUSERS.fullmatch(key):
            submodel, name, kind, underscored = match[1], match[2], match[3], False
        elif match := _KOHYA.fullmatch(key):
            submodel, name, kind, underscored = _SUBMODEL[match[1]], match[2], match[3], True
        elif match := _ALPHA.fullmatch(key):
            submodel = _SUBMODEL[match[1] or match[3]]
            name, kind, underscored = match[2] or match[4], "alpha", match[3] is not None
        else:
            unknown.append(key)
            continue
        layer = lora.layers.setdefault(submodel, {}).setdefault(name, Layer(name, underscored))
        part = "alpha" if kind == "alpha" else "down" if kind in _DOWN else "up"
        if getattr(layer, part) is not None:
            raise LoraError(f"LoRA {path.name} has {name}'s {part} twice (under two names)")
        if kind == "alpha":
            if tensor.size != 1:
                raise LoraError(f"LoRA {path.name}: {key} should hold one number, it has shape {tensor.shape}")
            layer.alpha = float(tensor.reshape(-1)[0])
        elif kind in _DOWN:
            layer.down = tensor
        else:
            layer.up = tensor
    if unknown:
        kinds = "LyCORIS (LoHa, LoKr, Tucker lora_mid), DoRA or full-weight layers, which edgesd does not merge" if any(
            re.search(r"hada_|lokr_|lora_mid|dora_scale|magnitude|\.diff(_b)?$", k) for k in unknown) \
            else "not LoRA layers edgesd knows"
        raise LoraError(f"LoRA {path.name} has keys that are {kinds}: {_listing(unknown)}")
    if "text_encoder_2" in lora.layers:
        raise LoraError(f"LoRA {path.name} has layers for a second text encoder (an SDXL LoRA); this model has one")
    for submodel, layers in lora.layers.items():
        incomplete = [name for name, layer in layers.items() if layer.down is None or layer.up is None]
        if incomplete:
            raise LoraError(f"LoRA {path.name} is incomplete: no down/up pair for {_listing(incomplete)}")
        mismatched = [name for name, layer in layers.items() if layer.up.ndim not in (2, 4) or layer.up.shape[1] != layer.down.shape[0]
                      or any(side != 1 for side in layer.up.shape[2:])]
        if mismatched:
            raise LoraError(f"LoRA {path.name}: the down and up matrices of {_listing(mismatched)} do not fit together")
        _apply_metadata_alphas(layers, _adapter_config(metadata, submodel, path))
    if not lora.layers:
        raise LoraError(f"LoRA {path.name} has no layers")
    return lora


def _read_tensors(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors) with safetensors' numpy API; bf16 tensors (numpy has no bf16, and kohya
    often saves in it) are widened to float32 from their bytes, located by the file's header."""
    from safetensors import SafetensorError, safe_open

    try:
        with open(path, "rb") as raw:
            size = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(size)) if size < 100 * 2**20 else {}
            bf16 = {}
            for key, entry in header.items():
                if isinstance(entry, dict) and entry.get("dtype") == "BF16":
                    start, end = entry["data_offsets"]
                    raw.seek(8 + size + start)
                    bits = np.frombuffer(raw.read(end - start), "<u2").astype(np.uint32) << 16
                    bf16[key] = bits.view(np.float32).reshape(entry["shape"])
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: bf16[key] if key in bf16 else f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise LoraError(f"LoRA {path.name} cannot be read as safetensors: {e}") from None
    return metadata, tensors


def _adapter_config(metadata: dict, submodel: str, path: Path) -> dict:
    """peft's LoraConfig for `submodel` as diffusers stores it (keys prefixed with the submodel)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        raise LoraError(f"LoRA {path.name}: its lora_adapter_metadata is not JSON") from None
    prefix = f"{submodel}."
    config = {key[len(prefix):]: value for key, value in config.items() if key.startswith(prefix)}
    if config.get("use_rslora"):
        raise LoraError(f"LoRA {path.name} is rank-stabilized (use_rslora), which edgesd does not merge")
    return config


def _apply_metadata_alphas(layers: dict[str, Layer], config: dict) -> None:
    """peft's alpha: alpha_pattern's entry whose key ends the module's name, else lora_alpha (peft's
    default 8 when the config leaves it out). `.alpha` tensors in the file come first."""
    if not config:
        return
    patterns = config.get("alpha_pattern") or {}
    for name, layer in layers.items():
        if layer.alpha is not None:
            continue
        matched = [alpha for pattern, alpha in patterns.items() if re.fullmatch(rf"(.*\.)?({re.escape(pattern)})", name)]
        layer.alpha = float(matched[0] if matched else config.get("lora_alpha", 8))


def _listing(names: Iterable[str], most: int = 6) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


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
        "time_embed_2": "time_embedding.linear_2"}


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
    weight as (in, out), as torch.onnx does for MatMul; a delta whose shape does not fit is an error."""
    delta = delta.reshape(delta.shape[0], -1)
    if transposed:
        delta = delta.T
    if delta.size != base.size or delta.shape[0] != base.shape[0]:
        raise LoraError(f"LoRA layer {module} has shape {delta.shape}, the model's weight {base.shape}")
    return (base.astype(np.float32) + delta.reshape(base.shape)).astype(base.dtype)


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
