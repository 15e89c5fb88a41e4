"""Outpainting as inpainting: extend the canvas, fill the new area from the image's edges, and mask
it (reaching a little into the image, so the seam is repainted too and blends)."""

import logging

import numpy as np
from PIL import Image, ImageFilter

from edgesd.errors import InvalidInputError
from edgesd.limits import MAX_PIXELS

log = logging.getLogger("edgesd")


def grown(size: tuple[int, int], left: int, right: int, top: int, bottom: int, multiple: int,
          max_pixels: int) -> tuple[int, int]:
    """(right, bottom) rounded up so the canvas sides are multiples of `multiple`; a canvas over
    `max_pixels` is refused here, before anything is allocated or loaded."""
    if min(left, right, top, bottom) < 0 or not any((left, right, top, bottom)):
        raise InvalidInputError("outpaint needs pixels to add on at least one side (left, right, top, bottom), and none "
                                "negative")
    width, height = size[0] + left + right, size[1] + top + bottom
    right, bottom = right + -width % multiple, bottom + -height % multiple
    width, height = size[0] + left + right, size[1] + top + bottom
    if width * height > max_pixels:
        raise InvalidInputError(f"outpainting {size[0]}x{size[1]} by left {left}, right {right}, top {top}, bottom {bottom} "
                                f"makes a {width}x{height} canvas, over the limit of {max_pixels} pixels; add less, or "
                                "resize the input first")
    return right, bottom


def extend(image: Image.Image, left: int, right: int, top: int, bottom: int, multiple: int,
           overlap: int, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image on a canvas grown by the given pixels (right/bottom rounded up so
    both sides are multiples of `multiple`, said when they are), the new area filled by stretching
    the image's border pixels outwards and blurring them (a start SD can paint over, where black or
    noise would show through at strength < 1); the mask white over the new area and `overlap`
    pixels into the image."""
    rounded = grown(image.size, left, right, top, bottom, multiple, max_pixels)
    if rounded != (right, bottom):
        changes = [f"{side} {before} -> {after}" for side, before, after in
                   (("right", right, rounded[0]), ("bottom", bottom, rounded[1])) if before != after]
        log.warning("outpaint: extension rounded so the canvas sides are multiples of %d px: %s", multiple, ", ".join(changes))
        right, bottom = rounded
    pixels = np.pad(np.asarray(image.convert("RGB")), ((top, bottom), (left, right), (0, 0)), mode="edge")
    radius = max(left, right, top, bottom) / 4
    canvas = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius))
    canvas.paste(image.convert("RGB"), (left, top))
    mask = Image.new("L", canvas.size, 255)
    inner = (left + overlap * (left > 0), top + overlap * (top > 0),
             left + image.width - overlap * (right > 0), top + image.height - overlap * (bottom > 0))
    if inner[0] < inner[2] and inner[1] < inner[3]:
        mask.paste(0, inner)
    return canvas, mask
