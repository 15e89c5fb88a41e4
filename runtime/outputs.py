"""Writing images: atomically (temp file + rename), never over an existing file unless asked,
with the generation parameters inside: a PNG text chunk, or EXIF UserComment in JPEG and WebP."""

import json
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from edgesd.errors import InvalidInputError

PARAMETERS_KEY = "edgesd"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_ASCII = b"ASCII\0\0\0"  # UserComment's character-code prefix (the JSON is written ASCII-only)
WITH_EXIF = {".jpg", ".jpeg", ".webp"}


def output_paths(output: Path, count: int) -> list[Path]:
    """OUT.png for one image; OUT-0.png, OUT-1.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def _write_atomic(path: Path, write, overwrite: bool = True) -> None:
    """write(file object) into a temp file beside `path`, then move it there: readers never see half
    a file. Without `overwrite`, an existing `path` (even one that appeared meanwhile) is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; an output is an ordinary file
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_no_clobber(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _move_no_clobber(tmp: str, path: Path) -> None:
    """Move tmp to path unless path exists, with no check-then-write race."""
    try:
        os.link(tmp, path)  # fails if path exists
        return
    except FileExistsError:
        raise InvalidInputError(f"{path} already exists; pass --overwrite to replace it") from None
    except OSError:  # no hard links here (FAT/exFAT cards, some network shares): claim the name instead
        pass
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise InvalidInputError(f"{path} already exists; pass --overwrite to replace it") from None
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def save_image(image: Image.Image, path: Path, parameters: dict, overwrite: bool = True) -> None:
    """Save in the format the suffix names, with `parameters` inside (PNG, JPEG, WebP)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InvalidInputError(f"cannot write {path}: unknown image format {path.suffix!r}; use .png, .jpg or .webp")
    text = json.dumps(parameters, ensure_ascii=True)
    options = {}
    if fmt == "PNG":
        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_text(PARAMETERS_KEY, text)
    elif path.suffix.lower() in WITH_EXIF:
        exif = Image.Exif()
        exif[_EXIF_IFD] = {_USER_COMMENT: _ASCII + text.encode("ascii")}  # (get_ifd() is writable only from Pillow 11.1)
        options["exif"] = exif
        options["quality"] = 95
    _write_atomic(path, lambda f: image.save(f, format=fmt, **options), overwrite)


def read_parameters(path: Path) -> dict:
    """The generation parameters edgesd stored in an image it wrote (PNG, JPEG or WebP)."""
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(PARAMETERS_KEY)
            if text is None:
                comment = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
                if isinstance(comment, bytes) and comment.startswith(_ASCII):
                    text = comment[len(_ASCII):].decode("ascii")
    except (OSError, ValueError, SyntaxError) as e:
        raise InvalidInputError(f"cannot read {path}: {e}") from None
    if not text:
        raise InvalidInputError(f"{path} carries no edgesd parameters (only images written by edgesd img2img do)")
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidInputError(f"{path}: its edgesd parameters are damaged") from None
