"""Control maps for ControlNets, torch-free: what a ControlNet is steered by, made from an image.

`canny` is OpenCV's Canny edge detector exactly as diffusers' ControlNet documentation applies it
(`cv2.Canny` on the RGB pixels, the one-channel edge map stacked to three), the input canny
ControlNets were trained on. OpenCV comes with the `control` extra (opencv-python-headless)."""

import numpy as np
from PIL import Image

from edgesd.errors import EdgesdError, InvalidInputError
from edgesd.image import load_image
from edgesd.limits import MAX_PIXELS

PREPROCESSORS = ("canny",)  # what --control-image may name instead of a file


def canny(image, low: int = 100, high: int = 200, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`image` (a path, PIL image or HxWx3 uint8 array) -> its Canny edge map as an RGB PIL image
    (white edges on black); `low` and `high` are the hysteresis thresholds (0..255 gradient units)."""
    try:
        import cv2
    except ImportError:
        raise EdgesdError("the canny preprocessor needs OpenCV: pip install 'edgesd[control]'") from None
    if not (0 <= low <= high <= 10_000):
        raise InvalidInputError(f"canny thresholds must satisfy 0 <= low <= high, got low {low}, high {high}")
    edges = cv2.Canny(np.asarray(load_image(image, max_pixels)), low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))
