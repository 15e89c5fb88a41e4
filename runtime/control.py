"""Control maps for ControlNets, torch-free: what a ControlNet is steered by, made from an image.

`canny` is OpenCV's Canny edge detector exactly as diffusers' ControlNet documentation applies it
(`cv2.Canny` on the RGB pixels, the one-channel edge map stacked to three), the input canny
ControlNets were trained on. OpenCV comes with the `control` extra (opencv-python-headless).

`depth` runs a depth estimator folder (`edgesd export Intel/dpt-hybrid-midas`) as transformers'
depth-estimation pipeline does, which diffusers' depth ControlNet docs use: its image processor
(resize with PIL, rescale, normalise, pad), the model, its output resized to the image's size by
torch's bicubic interpolation (written here in numpy: the runtime has no torch), scaled to 0..255 by
its own minimum and maximum, stacked to three channels.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from edgesd.errors import EdgesdError, InvalidInputError
from edgesd.image import load_image
from edgesd.limits import MAX_PIXELS

PREPROCESSORS = ("canny", "depth")  # what --control-image may name instead of a file


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


class DepthEstimator:
    """A depth estimator folder, loaded once for many images: `DepthEstimator.load(FOLDER)(image)`."""

    def __init__(self, session, processing: dict):
        self._session, self.processing = session, processing

    @classmethod
    def load(cls, folder: str | Path, backend: str = "auto", device: str = "auto",
             inference_precision: str = "auto") -> "DepthEstimator":
        """Compile the estimator as pipelines compile submodels (the same backend, device and precision choices)."""
        from edgesd.model_folder import open_component_folder
        from edgesd.sessions import BACKENDS, choose_backend, open_session

        estimator = open_component_folder(folder, "depth")
        formats = list(estimator.manifest["submodels"]["depth_estimator"]["formats"])
        backend = choose_backend(backend, device, formats)
        fmt = BACKENDS[backend].format
        estimator.verify_once([fmt])  # a damaged or half-copied file is named before the engine reads it
        session = open_session(backend, estimator.model_file("depth_estimator", fmt), device, inference_precision)
        return cls(session, estimator.manifest["depth"])

    def __call__(self, image, max_pixels: int = MAX_PIXELS) -> Image.Image:
        """`image` (a path, PIL image or HxWx3 uint8 array) -> its depth map as an RGB PIL image of the same
        size (near is bright, as the depth ControlNets were trained on)."""
        image = load_image(image, max_pixels)
        predicted = self._session.run({"pixel_values": preprocess(image, self.processing)})["predicted_depth"][0]
        depth = bicubic_resize(predicted.astype(np.float64), image.height, image.width)
        if not np.isfinite(depth).all():
            raise EdgesdError("the depth estimator gave non-finite values; re-export it, or run it with --precision fp32")
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
        gray = (scaled * 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))


def depth(image, estimator: "str | Path | DepthEstimator", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The depth map of `image` by `estimator` (a depth estimator folder, or one loaded with DepthEstimator.load)."""
    if not isinstance(estimator, DepthEstimator):
        estimator = DepthEstimator.load(estimator)
    return estimator(image, max_pixels)


def preprocess(image: Image.Image, processing: dict) -> np.ndarray:
    """transformers' DPTImageProcessor on an RGB image -> pixel_values (1, 3, H, W) float32."""
    if processing.get("do_resize", True):
        height, width = resized_size(image.height, image.width, processing)
        image = image.resize((width, height), processing.get("resample", 3))
    pixels = np.asarray(image, np.float32)
    if processing.get("do_rescale", True):
        pixels = pixels * np.float32(processing.get("rescale_factor", 1 / 255))
    if processing.get("do_normalize", True):
        pixels = (pixels - np.float32(processing["image_mean"])) / np.float32(processing["image_std"])
    if processing.get("do_pad") and processing.get("size_divisor"):
        pads = [(extra // 2, extra - extra // 2) for extra in (-side % processing["size_divisor"] for side in pixels.shape[:2])]
        pixels = np.pad(pixels, [*pads, (0, 0)])
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], np.float32)


def resized_size(height: int, width: int, processing: dict) -> tuple[int, int]:
    """The size DPTImageProcessor resizes to: `size`, or with keep_aspect_ratio the side scaled least,
    each side a multiple of ensure_multiple_of (Python's round, as transformers)."""
    multiple = processing.get("ensure_multiple_of", 1)
    scale_height, scale_width = processing["size"]["height"] / height, processing["size"]["width"] / width
    if processing.get("keep_aspect_ratio"):
        scale_height = scale_width = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height

    def constrain(value: float) -> int:  # at least one multiple, where transformers would fail on a 0
        return max(round(value / multiple), 1) * multiple

    return constrain(scale_height * height), constrain(scale_width * width)


def bicubic_resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="bicubic", align_corners=False) of a 2-D array: Keys' cubic
    with a = -0.75 at source pixel centres, edges repeated, rows then columns."""
    return _resize_rows(_resize_rows(values.T, height).T, width)


def _resize_rows(values: np.ndarray, size: int) -> np.ndarray:
    count = values.shape[1]
    source = (np.arange(size) + 0.5) * (count / size) - 0.5
    base = np.floor(source)
    t = source - base
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)  # (size, 4)
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, count - 1)
    return np.einsum("hsk,sk->hs", values[:, taps], weights)
