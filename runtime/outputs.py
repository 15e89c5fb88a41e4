"""Writing images: atomically (temp file + rename), never over an existing file unless asked,
with the generation parameters in a PNG text chunk."""

import json
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo


PARAMETERS_KEY = "edgesd"


def output_paths(output: Path, count: int) -> list[Path]:
    """OUT.png for one image; OUT-0.png, OUT-1.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def _write_atomic(path: Path, write) -> None:
    """write(file object) into a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; an output is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def save_image(image: Image.Image, path: Path, parameters: dict) -> None:
    """PNG with the parameters in an `edgesd` text chunk; other suffixes in their own format."""
    if path.suffix.lower() == ".png":
        info = PngInfo()
        info.add_text(PARAMETERS_KEY, json.dumps(parameters))
        _write_atomic(path, lambda f: image.save(f, format="PNG", pnginfo=info))
    else:
        fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        _write_atomic(path, lambda f: image.save(f, format=fmt))
