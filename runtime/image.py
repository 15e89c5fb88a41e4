"""Image in and out, exactly as diffusers' VaeImageProcessor does by default.

In: EXIF orientation applied and converted to RGB (as diffusers' load_image), size floored to a
multiple of the VAE scale factor, Lanczos resize, [0, 255] -> [-1, 1] float32 NCHW.
Out: [-1, 1] -> clamp to [0, 1] -> round(x * 255) uint8 PIL images.
"""

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgesd.errors import InvalidInputError

log = logging.getLogger("edgesd")
MAX_PIXELS = 4096 * 4096


def load_image(image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A path, PIL image or HxWx3 uint8 array -> an RGB PIL image, or a clear InvalidInputError."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(f"an image array must be HxWx3 uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    elif isinstance(image, (str, Path)):
        image = _open(Path(image), max_pixels)
    elif not isinstance(image, Image.Image):
        raise InvalidInputError(f"image must be a path, PIL image or HxWx3 uint8 array, not {type(image).__name__}")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInputError(f"image is {width}x{height}, over the limit of {max_pixels} pixels; resize it or raise the limit")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise InvalidInputError(f"image {path} does not exist")
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > max_pixels:
                raise InvalidInputError(
                    f"image {path} is {opened.width}x{opened.height}, over the limit of {max_pixels} pixels; resize it or raise the limit"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except InvalidInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"cannot read image {path}: {e}") from None


def preprocess(image: Image.Image, scale_factor: int, unet_factor: int = 1) -> np.ndarray:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1], sides floored to a multiple of `scale_factor`
    (the VAE's, as diffusers does) and, beyond diffusers, of `scale_factor * unet_factor`: an exported
    UNet cannot upsample odd-sized feature maps back (diffusers' torch UNet can), so such sizes are
    floored a little further, with a warning."""
    width, height = (side - side % scale_factor for side in image.size)
    multiple = scale_factor * unet_factor
    if width % multiple or height % multiple:
        log.warning("image size floored to a multiple of %d (the exported UNet needs it): %dx%d -> %dx%d",
                    multiple, width, height, width - width % multiple, height - height % multiple)
        width, height = width - width % multiple, height - height % multiple
    if width == 0 or height == 0:
        raise InvalidInputError(f"image {image.size[0]}x{image.size[1]} is smaller than {multiple} pixels on a side")
    if (width, height) != image.size:
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array.transpose(2, 0, 1)[None] * 2.0 - 1.0).astype(np.float32)


def postprocess(decoded: np.ndarray) -> list[Image.Image]:
    """(N, 3, H, W) decoder output in [-1, 1] -> N RGB PIL images."""
    images = np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return [Image.fromarray(im) for im in (images * 255).round().astype(np.uint8)]
