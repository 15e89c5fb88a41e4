"""Inpainting only around the mask (`padding_mask_crop`), as diffusers' VaeImageProcessor does it:
the mask's bounding box, padded and widened to the processing aspect ratio, is cut out, resized to
the processing size (so a small repair gets the model's full resolution), inpainted, and pasted back
over the untouched original through the mask. Ported by hand (torch-free) from diffusers 0.39.0's
get_crop_region, _resize_and_fill, _resize_and_crop and apply_overlay.
"""

import numpy as np
from PIL import Image, ImageOps

Box = tuple[int, int, int, int]  # x1, y1, x2, y2


def crop_region(mask: Image.Image, width: int, height: int, pad: int) -> Box:
    """The mask's non-zero bounding box, padded by `pad` and grown to width:height's aspect ratio."""
    m = np.asarray(mask.convert("L"))
    h, w = m.shape
    cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
    left, right = (cols[0], w - 1 - cols[-1]) if len(cols) else (w, w)
    top, bottom = (rows[0], h - 1 - rows[-1]) if len(rows) else (h, h)
    x1, y1 = int(max(left - pad, 0)), int(max(top - pad, 0))
    x2, y2 = int(min(w - right + pad, w)), int(min(h - bottom + pad, h))
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), mask.height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), mask.width)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, diff: int, limit: int) -> tuple[int, int]:
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def resize_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside width x height keeping the aspect ratio, centred; the bands left over are filled by
    stretching the image's edge rows/columns (an RGB result, as diffusers')."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.Resampling.LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return result


def _resize_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.Resampling.LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return result


def paste_back(mask: Image.Image, original: Image.Image, inpainted: Image.Image, box: Box) -> Image.Image:
    """The inpainted crop put back at `box`, under the original wherever the mask is black."""
    width, height = original.size
    kept = Image.new("RGBa", (width, height))
    kept.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    x1, y1, x2, y2 = box
    base = Image.new("RGBA", (width, height))
    base.paste(_resize_crop(inpainted, x2 - x1, y2 - y1), (x1, y1))
    result = base.convert("RGB").convert("RGBA")
    result.alpha_composite(kept.convert("RGBA"))
    return result.convert("RGB")
