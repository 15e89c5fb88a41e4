"""UNet calibration inputs, recorded from the fp32 model folder running real img2img calls.

Static (activation) int8 needs the ranges activations take in use, so the inputs are exactly what
edgesd's own pipeline feeds the UNet: the fp32 export runs img2img over a small built-in set of
prompts and procedurally drawn images (no downloads), or over the user's own images, with the
model folder's recommended strength and guidance (so the CFG batch of 2 is calibrated when the
model uses guidance), and every UNet call's feeds are recorded.

Runs: `min(num_samples, 8)` (prompt, image) pairs, each making max(ceil(num_samples / runs), 4)
UNet calls (just enough steps for that). Run i uses strength S * (i + 1) / runs, S the model's
recommended strength, so the recorded timesteps spread over the whole range the model is used at
(a run of few steps only visits the low-noise end of its range). When more calls were recorded
than asked for, the kept ones are evenly spaced in timestep order.

Image size: the model's native size, at most DEFAULT_MAX_SIZE unless asked for. onnxruntime's
calibrator runs a copy of the UNet with a min/max reduction on every quantized op's tensors, and
for SD 1.5 at 512x512 (4096 tokens) that went past 24 GB and was killed; at 256x256 the whole int8
conversion (both formats) peaked at 14.2 GB. Convolution activation ranges hardly depend on the
size; attention ranges may, which on onnxruntime stay float anyway (quantize_onnx) but are
quantized by OpenVINO's hybrid scheme: calibrate at the size you run at when memory allows.
"""

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgesd.errors import EdgesdError, InvalidInputError

log = logging.getLogger("edgesd")
DEFAULT_SAMPLES = 32
DEFAULT_MAX_SIZE = 256
MIN_CALLS_PER_RUN = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROMPTS = (
    "a photograph of a mountain lake at sunrise, highly detailed",
    "portrait of an old fisherman, oil painting, dramatic lighting",
    "a red sports car on a wet city street at night, neon reflections",
    "a bowl of fruit on a wooden table, still life, soft light",
    "a futuristic city skyline, digital art, trending on artstation",
    "a cute corgi puppy in a field of flowers, 35mm photo",
    "an ancient castle in the fog, watercolor",
    "abstract geometric shapes in bright colors, flat vector illustration",
)


class RecordingSession:
    """Wraps a Session (`.run(feeds) -> {name: output}`, `.input_types`) and keeps a copy of every call's feeds
    (and, with `keep_outputs`, outputs). Copies, because the pipeline reuses its input buffers."""

    def __init__(self, session, keep_outputs: bool = False):
        self._session = session
        self.input_types = session.input_types
        self.backend = getattr(session, "backend", None)
        self.device = getattr(session, "device", None)
        self.keep_outputs = keep_outputs
        self.feeds: list[dict] = []
        self.outputs: list[dict] = []

    @classmethod
    def around(cls, pipe, submodel: str = "unet", keep_outputs: bool = False) -> "RecordingSession":
        """Record every call `pipe` makes to `submodel` (through its wrap_sessions hook; the pipeline
        must hold its sessions, i.e. not be in low-memory mode)."""
        made = []

        def wrap(name, session):
            if name != submodel:
                return session
            made.append(cls(session, keep_outputs))
            return made[-1]

        pipe.wrap_sessions(wrap)
        return made[-1]

    def run(self, feeds: dict) -> dict:
        outputs = self._session.run(feeds)
        self.feeds.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        if self.keep_outputs:
            self.outputs.append({name: np.array(o, copy=True) for name, o in outputs.items()})
        return outputs


def load_pipeline(folder: Path, backend: str):
    """The runtime's pipeline on the fp32 folder, computing in exact fp32 on the CPU."""
    try:
        from edgesd.pipelines import Img2ImgPipeline
    except ImportError as e:  # the runtime is part of the same distribution; this is a broken install
        raise EdgesdError(f"calibration runs the edgesd runtime pipeline, which does not import here ({e})") from None
    return Img2ImgPipeline.load(folder, backend=backend, device="cpu", inference_precision="fp32")


def collect_unet_calibration(
    folder: Path,
    num_samples: int = DEFAULT_SAMPLES,
    images_dir: Path | None = None,
    backend: str = "onnxruntime",
    size: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Record `num_samples` UNet feed dicts from img2img runs of the fp32 model folder `folder`.

    `size`: the square image side (default: the model's native size, at most DEFAULT_MAX_SIZE); `images_dir`: use
    these images (cycled) instead of the built-in procedural ones.
    """
    check_calibration_options(images_dir, num_samples, size)
    pipe = load_pipeline(folder, backend)
    defaults = pipe.folder.defaults
    size = image_size(pipe.folder.manifest.get("sample_size"), size)
    runs = min(num_samples, len(PROMPTS))
    images = user_images(images_dir, size) if images_dir else builtin_images(size, runs)
    top_strength = defaults["strength"] or 1.0
    calls = max(math.ceil(num_samples / runs), MIN_CALLS_PER_RUN)
    recorder = RecordingSession.around(pipe, "unet")
    log.info("calibration: %d img2img runs at %dx%d to record %d UNet inputs", runs, size, size, num_samples)
    for i in range(runs):
        strength = top_strength * (i + 1) / runs
        pipe(images[i % len(images)], PROMPTS[i % len(PROMPTS)], strength=strength,
             num_inference_steps=steps_for_calls(calls, strength), guidance_scale=defaults["guidance_scale"], seed=seed + i)
    by_timestep = sorted(recorder.feeds, key=lambda feeds: float(np.asarray(feeds["timestep"]).ravel()[0]))
    return evenly_spaced(by_timestep, num_samples)


def image_size(native: int | None, asked: int | None = None) -> int:
    """The square side calibration runs at: as asked, else the model's native size capped (module docstring)."""
    return asked or min(native or 512, DEFAULT_MAX_SIZE)


def check_calibration_options(images_dir: Path | None, num_samples: int, size: int | None = None) -> None:
    """Refuse unusable options up front (an export takes minutes before calibration starts)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidInputError(f"the calibration sample count must be a positive integer, got {num_samples!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 64):
        raise InvalidInputError(f"the calibration image size must be an integer of at least 64 (pixels), got {size!r}")
    if images_dir is not None:
        _image_files(Path(images_dir))


def steps_for_calls(calls: int, strength: float) -> int:
    """The fewest inference steps that give `calls` UNet calls at this strength (int(steps * strength), as diffusers)."""
    steps = max(1, math.ceil(calls / strength))
    while int(steps * strength) < calls:
        steps += 1
    return steps


def evenly_spaced(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def user_images(folder: Path, size: int) -> list[Image.Image]:
    """The images in `folder`, center-cropped to squares of side `size`."""
    from edgesd.image import load_image

    return [_center_square(load_image(f), size) for f in _image_files(Path(folder))]


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidInputError(f"--calibration-images {folder} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"--calibration-images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _center_square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def builtin_images(size: int, count: int = len(PROMPTS), seed: int = 0) -> list[Image.Image]:
    """`count` deterministic RGB images: landscapes, shapes, textures and gradients."""
    rng = np.random.default_rng(seed)
    makers = (_landscape, _shapes, _clouds, _sun, _checker, _portrait, _stripes, _hue_wheel)
    return [makers[i % len(makers)](size, rng) for i in range(count)]


def _grid(size: int):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    return x, y


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8), "RGB")


def _landscape(size, rng):
    x, y = _grid(size)
    horizon = 0.55 + 0.08 * np.sin(2 * np.pi * (x * rng.uniform(1, 3) + rng.uniform()))
    sky = np.stack([0.4 + 0.5 * y, 0.6 + 0.3 * y, np.full_like(y, 0.95)], -1)
    ground = np.stack([0.2 + 0.3 * y, 0.45 - 0.2 * y, 0.15 + 0 * y], -1)
    return _to_image(np.where((y > horizon)[..., None], ground, sky))


def _shapes(size, rng):
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.uniform() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=color)
    return image


def _clouds(size, rng):
    coarse = rng.uniform(0, 1, (6, 6, 3)).astype(np.float32)
    image = _to_image(coarse).resize((size, size), Image.BICUBIC)
    return image.filter(ImageFilter.GaussianBlur(size / 32))


def _sun(size, rng):
    x, y = _grid(size)
    r = np.hypot(x - rng.uniform(0.3, 0.7), y - rng.uniform(0.3, 0.7))
    glow = np.exp(-((r / 0.25) ** 2))
    return _to_image(np.stack([0.1 + 0.9 * glow, 0.05 + 0.7 * glow, 0.3 * (1 - glow) + 0.2 * glow], -1))


def _checker(size, rng):
    x, y = _grid(size)
    cells = int(rng.integers(4, 12))
    board = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
    a, b = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    return _to_image(board[..., None] * a + (1 - board[..., None]) * b)


def _portrait(size, rng):
    image = Image.new("RGB", (size, size), (70, 90, 120))
    draw = ImageDraw.Draw(image)
    s = size
    draw.ellipse((0.3 * s, 0.15 * s, 0.7 * s, 0.65 * s), fill=(225, 185, 160))  # face
    draw.rectangle((0.2 * s, 0.65 * s, 0.8 * s, s), fill=(40, 40, 60))  # shoulders
    for ex in (0.42, 0.58):
        draw.ellipse(((ex - 0.03) * s, 0.35 * s, (ex + 0.03) * s, 0.4 * s), fill=(30, 30, 30))
    return image.filter(ImageFilter.GaussianBlur(size / 128))


def _stripes(size, rng):
    x, y = _grid(size)
    phase = (x * np.cos(rng.uniform(0, np.pi)) + y * np.sin(rng.uniform(0, np.pi))) * rng.uniform(3, 10)
    return _to_image(0.5 + 0.5 * np.stack([np.sin(2 * np.pi * phase + k) for k in (0, 2, 4)], -1))


def _hue_wheel(size, rng):
    x, y = _grid(size)
    angle = np.arctan2(y - 0.5, x - 0.5)
    radius = np.clip(np.hypot(x - 0.5, y - 0.5) * 2, 0, 1)
    rgb = 0.5 + 0.5 * np.stack([np.cos(angle + k) for k in (0, 2.094, 4.189)], -1)
    return _to_image(rgb * radius[..., None] + (1 - radius[..., None]) * 0.9)
