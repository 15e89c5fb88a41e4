"""Bad and unusual input images: a clean InvalidInputError or a conversion as diffusers' load_image does."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgesd.errors import InvalidInputError
from edgesd.image import load_image, target_size


def save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_not_an_image(tmp_path):
    (tmp_path / "a.png").write_text("hello")
    with pytest.raises(InvalidInputError, match="cannot read image"):
        load_image(tmp_path / "a.png")


def test_truncated_file(tmp_path):
    path = save(tmp_path, Image.new("RGB", (64, 64), "red"), "t.jpg", quality=95)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InvalidInputError, match="cannot read image"):
        load_image(path)


def test_too_small_for_the_vae():
    with pytest.raises(InvalidInputError, match="smaller than 8 pixels"):
        target_size(load_image(np.zeros((1, 1, 3), np.uint8)).size, 8)


@pytest.mark.parametrize("requested,expected", [
    (None, (1000, 744)),  # a 1000x750 photo: floored to the VAE's multiple of 8 only, as diffusers does
    ((512, 512), (512, 512)),
    ((512, None), (512, 384)),  # one side given: the aspect ratio is kept
    ((None, 300), (400, 296)),
    ((517, 389), (512, 384)),
])
def test_target_size(requested, expected):
    assert target_size((1000, 750), 8, requested) == expected


def test_pixel_limit_and_override(tmp_path):
    path = save(tmp_path, Image.new("RGB", (300, 200)), "big.png")
    with pytest.raises(InvalidInputError, match="over the limit of 50000 pixels"):
        load_image(path, max_pixels=50_000)
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_bad_array():
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        load_image(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1"])
def test_modes_are_converted_as_diffusers_does(tmp_path, mode):
    """8-bit modes as diffusers' load_image; 16-bit ones differ on purpose: Pillow's conversion, which it
    uses, clips them to white above 255 (tests/test_adversarial.py keeps their full range)."""
    diffusers_utils = pytest.importorskip("diffusers.utils")
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = save(tmp_path, image, f"in.{fmt.lower()}", format=fmt)
    ours = load_image(path)
    assert ours.mode == "RGB"
    assert np.array_equal(np.asarray(ours), np.asarray(diffusers_utils.load_image(str(path))))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90
    path = save(tmp_path, image, "o.jpg", exif=exif)
    assert load_image(path).size == (20, 40)


def _seed_files() -> list[bytes]:
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    out = []
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        buffer = io.BytesIO()
        rgb.save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed_index=st.integers(0, 3), edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10_000))
def test_fuzzed_bytes_give_an_image_or_a_clean_error(tmp_path, seed_index, edits, cut):
    data = bytearray(_seed_files()[seed_index])
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path / "fuzz.img"
    path.write_bytes(bytes(data[: max(1, len(data) - cut % len(data))]))
    try:
        image = load_image(path)
    except InvalidInputError:
        return
    assert image.mode == "RGB" and image.size[0] > 0


def test_result_save_carries_parameters_and_never_overwrites(exported, tmp_path, caplog):
    from pathlib import Path

    from edgesd import Img2ImgPipeline
    from edgesd.outputs import read_parameters

    pipe = Img2ImgPipeline.load(exported["tiny-sd2"], backend="onnxruntime", device="cpu", inference_precision="fp32")
    small = Path(__file__).parent / "data" / "small.png"
    with caplog.at_level("WARNING", logger="edgesd"):
        result = pipe(small, "x", negative_prompt="blur", guidance_scale=1.0, seed=3)
    assert "the negative prompt is ignored" in caplog.text
    result.save(tmp_path / "a.webp")
    stored = read_parameters(tmp_path / "a.webp")
    assert stored["seed"] == 3 and stored["backend"] == "onnxruntime" and stored["device"] == "cpu"
    assert stored["inference_precision"] == "fp32"
    assert stored["index"] == 0 and stored["size"] == [64, 48] and len(stored["input_sha256"]) == 64
    with pytest.raises(InvalidInputError, match=r"already exists and was kept; overwrite=True \(on the command line, --overwrite\)"):
        result.save(tmp_path / "a.webp")
    result.save(tmp_path / "a.webp", overwrite=True)
