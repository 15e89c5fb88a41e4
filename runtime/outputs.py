"""Writing images: atomically (temp file + rename), never over an existing file unless asked,
with the generation parameters inside: a PNG text chunk, or EXIF UserComment in JPEG and WebP.
Temporary files and claims (an output another edgesd process is making) carry the writer's pid, so
those a killed process left are recognised and removed by the next run."""

import errno
import hashlib
import io
import json
import os
import re
import secrets
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from edgesd.errors import InvalidInputError
from edgesd.schema import check_parameters

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
    tmp = _temporary(path)  # named before it exists, so a signal at any point leaves nothing behind
    try:
        with open(tmp, "xb") as f:  # an ordinary file's mode (the umask's)
            write(f)
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_no_clobber(tmp, path)
    finally:
        with _uninterrupted():
            tmp.unlink(missing_ok=True)


def _exists(path: Path) -> InvalidInputError:
    """Said to API users and the CLI alike (the CLI checks its outputs before the run, in its own words)."""
    return InvalidInputError(f"{path} already exists and was kept; overwrite=True (on the command line, --overwrite) "
                             "replaces it")


def _move_no_clobber(tmp: str, path: Path) -> None:
    """Move tmp to path unless path exists, with no check-then-write race."""
    try:
        os.link(tmp, path)  # fails if path exists
        return
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # no hard links here (FAT/exFAT cards, some network shares): claim the name instead
        pass
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise _exists(path) from None
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def image_format(path: Path) -> str:
    """The format Pillow writes for `path`'s suffix, among those that carry the parameters (PNG, JPEG,
    WebP), or InvalidInputError."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt not in ("PNG", "JPEG", "WEBP") or fmt not in Image.SAVE:
        raise InvalidInputError(f"cannot write {path}: {path.suffix or 'no suffix'} is not an image format edgesd writes "
                                "(with its parameters inside); use .png, .jpg or .webp")
    return fmt


def check_writable(folder: Path, name: str) -> None:
    """Can `name` be written into `folder`? Tried with a temporary file before any work; a folder
    still to be made is checked at the nearest one that exists (nothing is created here)."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists() or p == p.parent)
    try:
        if existing != folder.absolute() and not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        probe = _temporary(existing / name)
        try:
            probe.touch(exist_ok=False)
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise InvalidInputError(f"cannot write outputs in {folder}: {e.strerror or e}; choose another --output") from None


# Claims and temporaries name their process and machine: on storage several machines share, a process
# of another machine cannot be asked whether it runs, so its files are taken as live.
_HOST = socket.gethostname()
_HOST_TAG = hashlib.sha256(_HOST.encode()).hexdigest()[:8]


def claim(path: Path) -> bool:
    """Mark `path` as being made by this process (a `.NAME.claim` file beside it holding our pid and
    host); False if another live process has claimed it. A claim whose process is gone is taken over
    (one of another machine is never: delete it by hand if that machine stopped)."""
    marker = _claim_file(path)
    for _ in range(2):
        try:  # written whole or not at all, so a claim always names its process
            _write_atomic(marker, lambda f: f.write(f"{os.getpid()} {_HOST}".encode()), overwrite=False)
            return True
        except InvalidInputError:  # claimed already: by a live process other than this one, or left by a dead one
            pid, host = _owner_in(marker)
            if host != _HOST or (pid != os.getpid() and _alive(pid)):
                return False
            marker.unlink(missing_ok=True)
    return False


def release(path: Path) -> None:
    marker = _claim_file(path)
    with _uninterrupted():
        if _owner_in(marker) == (os.getpid(), _HOST):
            marker.unlink(missing_ok=True)


@contextmanager
def _uninterrupted():
    """Ctrl-C and SIGTERM wait until the block is done: a cleanup a signal must not cut in half."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def remove_stale(folder: Path, ours: bool = False) -> None:
    """Delete the temporary files and claims in `folder` that processes no longer running left behind
    (and, with `ours`, this process's own: after an interrupt)."""
    if not folder.is_dir():
        return
    for file in folder.glob(".*"):
        if match := _TEMPORARY.fullmatch(file.name):
            pid, here = int(match[1]), match[2] in (None, _HOST_TAG)
        elif file.name.endswith(".claim"):
            pid, host = _owner_in(file)
            here = host == _HOST
        else:
            continue
        if here and (not _alive(pid) or (ours and pid == os.getpid())):
            file.unlink(missing_ok=True)


_TEMPORARY = re.compile(r"\..+\.(\d+)(?:_([0-9a-f]{8}))?\.[A-Za-z0-9_]+\.tmp")  # _write_atomic's: .NAME.PID_HOST.RANDOM.tmp


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}_{_HOST_TAG}.{secrets.token_hex(4)}.tmp")  # the pattern of _TEMPORARY


def _claim_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.claim")


def _owner_in(marker: Path) -> tuple[int | None, str]:
    """(pid, host) of a claim; one an earlier edgesd wrote (a pid alone) is this machine's."""
    try:
        pid, _, host = marker.read_text().strip().partition(" ")
        return int(pid), host or _HOST
    except (OSError, ValueError):
        return None, _HOST


def _alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def save_image(image: Image.Image, path: Path, parameters: dict, overwrite: bool = True) -> None:
    """Save in the format the suffix names, with `parameters` inside (PNG, JPEG, WebP)."""
    fmt = image_format(path)
    options = {}
    if fmt == "PNG":
        options["pnginfo"] = _png_info(parameters)
    elif path.suffix.lower() in WITH_EXIF:
        exif = Image.Exif()
        exif[_EXIF_IFD] = {_USER_COMMENT: _ASCII + json.dumps(parameters, ensure_ascii=True).encode("ascii")}  # (get_ifd() is writable only from Pillow 11.1)
        options["exif"] = exif
        options["quality"] = 95
    _write_atomic(path, lambda f: image.save(f, format=fmt, **options), overwrite)


def png_bytes(image: Image.Image, parameters: dict, text: dict[str, str] | None = None) -> bytes:
    """The PNG save_image would write, in memory, with other text chunks besides (A1111's "parameters")."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(parameters, text))
    return buffer.getvalue()


def _png_info(parameters: dict, text: dict[str, str] | None = None) -> PngInfo:
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, json.dumps(parameters, ensure_ascii=True))
    for key, value in (text or {}).items():
        info.add_itxt(key, value)  # international text: a prompt may be any language
    return info


def read_parameters(path: Path) -> dict:
    """The generation parameters edgesd stored in an image it wrote (PNG, JPEG or WebP)."""
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(PARAMETERS_KEY)
            if text is None:
                comment = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
                if isinstance(comment, bytes) and comment.startswith(_ASCII):
                    text = comment[len(_ASCII):].decode("ascii")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"cannot read {path}: {e}") from None
    if not text:
        raise InvalidInputError(f"{path} carries no edgesd parameters (only images written by edgesd img2img do)")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{path}: its edgesd parameters are damaged (not JSON)") from None
    return check_parameters(data, path)
