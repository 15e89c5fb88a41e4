"""Writing images: atomically (temp file + rename), never over an existing file unless asked,
with the generation parameters in a PNG text chunk."""

import json
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from edgesd.errors import InvalidInputError

PARAMETERS_KEY = "edgesd"


def output_paths(output: Path, count: int) -> list[Path]:
    """OUT.png for one image; OUT-0.png, OUT-1.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def check_writable(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise InvalidInputError(f"{', '.join(existing)} already exists; pass --overwrite to replace it")


def save_image(image: Image.Image, path: Path, parameters: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, json.dumps(parameters))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix.lower() == ".png":
                image.save(f, format="PNG", pnginfo=info)
            else:
                image.save(f, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
