"""Outpainting: the canvas and mask it builds, and the whole path through the API."""

import numpy as np
import pytest
from PIL import Image

from edgesd import InpaintPipeline
from edgesd.errors import InvalidInputError
from edgesd.outpaint import extend


def gradient(width: int = 40, height: int = 24) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 6, y * 10, (x + y) * 4], axis=-1).astype(np.uint8))


def test_canvas_mask_and_fill(caplog):
    image = gradient()
    with caplog.at_level("WARNING", logger="edgesd"):
        canvas, mask = extend(image, left=8, right=5, top=0, bottom=16, multiple=8, overlap=4)
    assert canvas.size == mask.size == (56, 40)  # 40 + 8 + 5 -> right rounded up to 8
    assert "right 5 -> 8" in caplog.text and "bottom" not in caplog.text
    assert np.array_equal(np.asarray(canvas)[0:24, 8:48], np.asarray(image))  # the image, untouched
    m = np.asarray(mask)
    assert (m[:, :12] == 255).all() and (m[:, 44:] == 255).all() and (m[20:, :] == 255).all()  # new area + overlap
    assert (m[0:20, 12:44] == 0).all()  # no overlap at the top: nothing was added there
    far_left = np.asarray(canvas)[10, 0].astype(int)  # stretched from the left edge, blurred
    assert np.abs(far_left - np.asarray(image)[10, 0]).max() < 40


@pytest.mark.parametrize("sides", [(0, 0, 0, 0), (-8, 0, 0, 0)])
def test_needs_a_positive_extension(sides):
    with pytest.raises(InvalidInputError, match="at least one side"):
        extend(gradient(), *sides, multiple=8, overlap=4)


def test_outpaint_through_the_api(exported):
    pipe = InpaintPipeline.load(exported["tiny-sd2"], backend="onnxruntime", device="cpu", inference_precision="fp32")
    result = pipe.outpaint(gradient(64, 48), "sky", left=16, top=8, seed=1, num_inference_steps=4)
    assert result.images[0].size == (80, 56)
    assert result.settings["extension"] == dict(left=16, right=0, top=8, bottom=0, overlap=16)
    assert result.provenance["task"] == "outpaint" and result.settings["size"] == [64, 48]
