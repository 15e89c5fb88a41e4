"""Will a call fit in memory? Estimated from the model's configs before anything runs, so an input
far above a model's native size ends in a one-line error instead of the kernel's OOM kill.

What grows with the image, measured on tiny-sd1 (64 px native) and SD 1.5 at 512 px, fp32:
- Attention's score matrices (batch x heads x tokens^2 floats), where the engine materialises them.
  OpenVINO's CPU plugin fuses attention (SDPA) and does not (0.33 GB on SD 1.5 at 512), nor does
  onnxruntime's MultiHeadAttention in the UNets edgesd exports (`onnx_attention_fused`: tiny-sd1's
  UNet at 80x60 latents grows 18 MB for 92 MB of scores). Unfused (optimum's exports, edgesd <= 0.2),
  with onnxruntime's sessions sharing one CPU arena and no memory patterns (sessions/onnxruntime.py),
  its peak grows by about 2.5x the largest one (tiny-sd1 at 160x120: 92 MB of scores, 208 MB; SD 1.5
  at 512: 1.07 GB, 2.7 GB); the VAE's mid-block attention (unfused everywhere) by about 2.2x (tiny-sd1:
  201 MB).
- The VAE's full-resolution layers hold a few (channels x pixels) tensors at once.
The estimate errs high (SD 1.5 at 512 on onnxruntime: 1.07 GB estimated, 1.03 GB measured with the
fused UNet; 3.2 and 2.7 GB unfused).
"""

import os
from pathlib import Path

from edgesd.errors import InvalidInputError
from edgesd.model_folder import ModelFolder
from edgesd.sessions import BACKEND_OF_FORMAT

GIB = 2**30
# backend -> (UNet's attention unfused, fused by the export, the VAE's): score matrices held at once
ATTENTION_SCORE_COPIES = {"onnxruntime": (3, 0, 3), "openvino": (0, 0, 0)}
VAE_FULL_RESOLUTION_COPIES = 6
# The UNet's first level (block_out_channels[0] x latent pixels per image) also grows with the image on
# every engine, tiled VAE or not; a resnet holds its input, normalised input, output and skip at once.
UNET_FULL_RESOLUTION_COPIES = 4


def _heads(unet: dict, level: int) -> int:
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim", 8)  # diffusers' naming quirk
    return heads[level] if isinstance(heads, list) else heads


def _terms(folder: ModelFolder, width: int, height: int, num_images: int, guidance: bool, backend: str,
           low_memory: bool, vae: ModelFolder | None = None) -> tuple[int, int, int, int]:
    """Bytes of what grows with the image: the UNet's attention, the VAE's attention, its full-resolution
    layers, the UNet's full-resolution layers. `vae`: a VAE folder used in place of the model's (a tiny
    VAE has no attention)."""
    scale = folder.manifest["vae_scale_factor"]
    tokens = (width // scale) * (height // scale)
    unet = folder.unet_config
    unet_batch = num_images * (2 if guidance else 1)
    unet_scores = max((unet_batch * _heads(unet, level) * (tokens // 4**level) ** 2
                       for level, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind), default=0)
    config = (vae or folder).vae_config
    attention = config.get("mid_block_add_attention", True) and not (vae and vae.manifest.get("vae_encoder_output") == "latents")
    vae_pixels = width * height
    if low_memory and max(width, height) > folder.vae_sample_size:  # tiled: one tile at a time
        vae_pixels = folder.vae_sample_size**2
    vae_scores = num_images * (vae_pixels // scale**2) ** 2 if attention else 0
    unfused, fused, vae_copies = ATTENTION_SCORE_COPIES.get(backend, (3, 3, 3))
    unet_copies = fused if folder.manifest.get("onnx_attention_fused") else unfused
    vae_layers = VAE_FULL_RESOLUTION_COPIES * num_images * config["block_out_channels"][0] * vae_pixels
    unet_layers = UNET_FULL_RESOLUTION_COPIES * unet_batch * unet["block_out_channels"][0] * tokens
    return 4 * unet_copies * unet_scores, 4 * vae_copies * vae_scores, 4 * vae_layers, 4 * unet_layers


def call_bytes(folder: ModelFolder, width: int, height: int, num_images: int, guidance: bool, backend: str,
               low_memory: bool = False, vae: ModelFolder | None = None) -> int:
    """Working memory of one call at (width, height), beyond the loaded weights."""
    return max(_terms(folder, width, height, num_images, guidance, backend, low_memory, vae))


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup limit; None if unknown."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    available = next((int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if available is not None and limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def weights_bytes(folder: ModelFolder, fmt: str, low_memory: bool) -> int:
    """What loading the folder's `fmt` files adds (in low-memory mode, one submodel at a time)."""
    files = BACKEND_OF_FORMAT[fmt].files
    sizes = [sum(f.stat().st_size for f in (folder.path / name).iterdir() if f.name in files) for name in folder.manifest["submodels"]]
    return max(sizes) if low_memory else sum(sizes)


def _int8_unet(folder: ModelFolder) -> bool:
    return any(spec.get("precision", "fp32").startswith("int8") for spec in folder.manifest["submodels"]["unet"]["formats"].values())


def check_call(folder: ModelFolder, width: int, height: int, num_images: int, guidance: bool, backend: str,
               low_memory: bool, loading: int, what: str, vae: ModelFolder | None = None) -> None:
    """Raise InvalidInputError, naming what would help, when the call (plus `loading` bytes of
    weights still to load) needs more than is available (EDGESD_MEMORY_CHECK=0 skips the check).
    `vae`: a VAE folder that replaces the model's VAE for encoding and decoding."""
    unet_attention, vae_attention, vae_layers, _ = terms = _terms(folder, width, height, num_images, guidance, backend,
                                                               low_memory, vae)
    needed = max(terms) + loading
    available = available_bytes()
    if available is None or os.environ.get("EDGESD_MEMORY_CHECK") == "0" or needed <= available:
        return
    remedies = ["smaller or fewer" if num_images > 1 else "smaller"]
    weights_dominate = loading > max(terms)
    if (weights_dominate or max(vae_attention, vae_layers) >= unet_attention) and not low_memory:
        remedies.append("low_memory")
    if weights_dominate and not _int8_unet(folder):
        remedies.append("int8")
    if max(unet_attention, vae_attention) > vae_layers and backend == "onnxruntime":
        remedies.append("openvino")
    said = f"{what} needs about {needed / GIB:.1f} GiB of memory and {available / GIB:.1f} GiB is available: "
    worded = ["; ".join(words[remedy] for remedy in remedies) for words in _REMEDIES]
    raise InvalidInputError(*(f"{said}{text}; EDGESD_MEMORY_CHECK=0 runs it anyway" for text in worded))


# What helps a refused call, in the Python API's words and the command line's.
_INT8 = "export it in int8 (edgesd export SOURCE --target cpu: about a quarter of the weights)"
_REMEDIES = (
    {"smaller": "make it smaller (size=(width, height))",
     "smaller or fewer": "make it smaller (size=(width, height)) or fewer num_images",
     "low_memory": "load it with low_memory=True (tiles the VAE, one submodel loaded at a time)", "int8": _INT8,
     "openvino": "load it with backend='openvino' (its fused attention keeps no score matrices)"},
    {"smaller": "make it smaller with --resize WxH (or --width/--height)",
     "smaller or fewer": "make it smaller with --resize WxH (or --width/--height) or fewer --num-images",
     "low_memory": "use --low-memory (tiles the VAE, one submodel loaded at a time)", "int8": _INT8,
     "openvino": "use --backend openvino (its fused attention keeps no score matrices)"},
)
