"""Image in and out, exactly as diffusers' VaeImageProcessor does by default.

In: EXIF orientation applied and converted to RGB (as diffusers' load_image), optionally resized to a
requested size, floored to a multiple of the VAE scale factor, Lanczos resize, [0, 255] -> [-1, 1]
float32 NCHW.
Out: [-1, 1] -> clamp to [0, 1] -> round(x * 255) uint8 PIL images.
"""

import hashlib
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgesd.errors import InvalidInputError
from edgesd.limits import MAX_PIXELS


def load_image(image, max_pixels: int = MAX_PIXELS, keep_gray: bool = False) -> Image.Image:
    """A path, PIL image or HxWx3 uint8 array -> an RGB PIL image, or a clear InvalidInputError.
    `keep_gray` (masks): grayscale PIL images and HxW arrays stay grayscale ("L"), as diffusers'
    mask processor resizes them in their own mode."""
    if isinstance(image, np.ndarray):
        gray = keep_gray and image.ndim == 2
        if image.dtype != np.uint8 or not (gray or (image.ndim == 3 and image.shape[2] == 3)):
            raise InvalidInputError(f"an image array must be HxWx3{' or HxW' * keep_gray} uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    elif isinstance(image, (str, Path)):
        image = _open(Path(image), max_pixels)
    elif not isinstance(image, Image.Image):
        raise InvalidInputError(f"image must be a path, PIL image or HxWx3 uint8 array, not {type(image).__name__}")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInputError(f"image is {width}x{height}, over the limit of {max_pixels} pixels; resize it or raise the limit")
    image = _eight_bit(image)
    if image.mode != "RGB" and not (keep_gray and image.mode == "L"):
        image = image.convert("RGB")
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale ("I;16", "I": 16-bit PNGs and TIFFs) and float ("F") images as 8-bit
    grayscale over their full range; Pillow's own conversion would clip everything above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        scaled = np.asarray(image, dtype=np.float64) / 257  # 65535 -> 255
    elif image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scaled = pixels * 255 if pixels.max(initial=0) <= 1 else pixels  # floats in [0, 1], else in [0, 255]
    else:
        return image
    return Image.fromarray(np.clip(scaled.round(), 0, 255).astype(np.uint8), "L")


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise InvalidInputError(f"image {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    return _decode(path, f"image {path}", max_pixels)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, what: str = "image") -> Image.Image:
    """An encoded image (PNG, JPEG, WebP, ... bytes) -> RGB, as a file is read (`what` names it in errors)."""
    return _decode(io.BytesIO(data), what, max_pixels)


def _decode(source, what: str, max_pixels: int) -> Image.Image:
    """The size is checked before the pixels are decoded (a small file may claim a huge image)."""
    try:
        with Image.open(source) as opened:
            if opened.width * opened.height > max_pixels:
                raise InvalidInputError(
                    f"{what} is {opened.width}x{opened.height}, over the limit of {max_pixels} pixels; resize it or raise the limit"
                )
            opened.load()
            image = _eight_bit(ImageOps.exif_transpose(opened))  # files load as diffusers' load_image does: RGB
            return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except InvalidInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"cannot read {what}: {e}") from None


def image_sha256(image: Image.Image) -> str:
    """Identifies an input by its RGB pixels (the same for a file and the PIL image loaded from it)."""
    return hashlib.sha256(f"{image.width}x{image.height}:".encode() + image.tobytes()).hexdigest()


def target_size(size: tuple[int, int], scale_factor: int, requested: tuple[int | None, int | None] | None = None,
                max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) an input of `size` is processed at: `requested` where given (one side None
    keeps the aspect ratio), floored to a multiple of the VAE's scale factor, as diffusers does; over
    `max_pixels` is refused (before any resize allocates it)."""
    width, height = size
    if requested is not None and requested != (None, None):
        new_width, new_height = requested
        if new_width is None:
            new_width = round(width * new_height / height)
        elif new_height is None:
            new_height = round(height * new_width / width)
        width, height = new_width, new_height
    width, height = width - width % scale_factor, height - height % scale_factor
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"image {size[0]}x{size[1]} is smaller than {scale_factor} pixels on a side")
    if width * height > max_pixels:
        raise InvalidInputError(f"resizing {size[0]}x{size[1]} to {width}x{height} is over the limit of {max_pixels} pixels; "
                                "ask for a smaller size (or raise the limit: --max-pixels, max_pixels)")
    return width, height


def within_area(size: tuple[int, int], area: int) -> tuple[int, int] | None:
    """The size, aspect kept, that has `area` pixels, for inputs larger than that (None: keep the size)."""
    if size[0] * size[1] <= area:
        return None
    scale = math.sqrt(area / (size[0] * size[1]))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def preprocess(image: Image.Image, size: tuple[int, int], normalize: bool = True) -> np.ndarray:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1] (or, not `normalize`d, [0, 1]: ControlNets'
    control images) at `size` (Lanczos resize where it differs)."""
    if size != image.size:
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    array = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    return (array * 2.0 - 1.0).astype(np.float32) if normalize else np.ascontiguousarray(array)


def postprocess(decoded: np.ndarray) -> list[Image.Image]:
    """(N, 3, H, W) decoder output in [-1, 1] -> N RGB PIL images; NaN or inf (an overflow, broken
    weights or LoRA) is an error, not a black image."""
    if not np.isfinite(decoded).all():
        raise InvalidInputError("the run produced NaN or infinite values, so no image was written (an fp16/bf16 "
                                "overflow, or weights or a LoRA that break the model): try --precision fp32 "
                                "(inference_precision='fp32') or without the LoRA")
    images = np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return [Image.fromarray(im) for im in (images * 255).round().astype(np.uint8)]
