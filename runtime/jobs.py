"""What an `edgesd img2img` invocation has to do: one input or a folder of inputs. A folder run is
resumable (inputs whose outputs all exist are skipped) and gives every input its own outputs, named
by the input's own name alone, so they stay the same when the folder changes: a.png -> a.png,
a.jpg -> a.jpg.png (a.jpg and a.webp beside it never meet). Outputs an earlier edgesd named by the
stem (a.jpg -> a.png) are found on resume. Everything about the outputs is checked before any work:
they can be written, and none is an input (not even with --overwrite)."""

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from edgesd.errors import EdgesdError, InvalidInputError
from edgesd.image import image_sha256, load_image
from edgesd.outputs import check_writable, image_format, output_paths, read_parameters, remove_stale

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Job:
    image: Path
    outputs: list[list[Path]]  # per run (a variation or an iteration): its image files
    grid: Path  # where its contact sheet goes, if one is asked for


@dataclass
class Plan:
    jobs: list[Job]
    skipped: list[tuple[Path, str]]  # (input, why): already done, not an image, ...


def _job(image: Path, base: Path, num_images: int, suffixes: list[str]) -> Job:
    outputs = [output_paths(base.with_name(f"{base.stem}{suffix}{base.suffix}"), num_images) for suffix in suffixes]
    return Job(image, outputs, base.with_name(f"{base.stem}-grid.png"))


def files_of(job: Job, grid: bool) -> list[Path]:
    return [p for paths in job.outputs for p in paths] + ([job.grid] if grid else [])


def plan_jobs(image: Path, output: Path | None, num_images: int, overwrite: bool, suffixes: list[str] = ("",),
              grid: bool = False, other_inputs: list[Path] = ()) -> Plan:
    """The jobs to run, each with `num_images` outputs per run named OUT{suffix} (and a contact sheet
    with `grid`). A single input whose output exists is an error: nothing is overwritten silently;
    in a folder such an input is skipped (all outputs there) or refused (some). `other_inputs` (a
    mask, a replayed image) are never replaced either."""
    for path in (image, *([output] if output else [])):
        if any(len(os.fsencode(part)) > 255 for part in path.parts):
            raise InvalidInputError(f"{str(path)[:80]}...: a name in this path is longer than file systems allow (255 bytes)")
    if not image.is_dir():
        if not image.is_file():
            raise InvalidInputError(f"image {image} does not exist")
        output = output or Path("out.png")
        if output.is_dir():
            raise InvalidInputError(f"--output {output} is a folder; with one input, name the output file (e.g. {output / 'out.png'})")
        job = _job(image, output, num_images, list(suffixes))
        _check_outputs([image, *other_inputs], [job], grid)
        existing = [str(p) for p in files_of(job, grid) if p.exists()]
        if existing and not overwrite:
            raise InvalidInputError(f"{', '.join(existing)} already exists; pass --overwrite to replace it")
        return Plan([job], [])
    out_dir = output or image / "edgesd-out"
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"with a folder of inputs, --output must be a folder; {out_dir} is a file")
    if _same(out_dir, image):
        raise InvalidInputError(f"--output {out_dir} is the input folder: outputs would mix with (and could replace) the "
                                f"inputs; write them to a subfolder (the default is {image / 'edgesd-out'}) or another folder")
    files = sorted(p for p in image.iterdir() if p.is_file() and not p.name.startswith("."))
    inputs = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    plan = Plan([], [(p, f"not an image input (reads {' '.join(IMAGE_SUFFIXES)})") for p in files if p not in inputs])
    if not inputs:
        raise InvalidInputError(f"{image} holds no image inputs ({' '.join(IMAGE_SUFFIXES)})")
    planned = {}
    for path, name in _output_names(inputs).items():
        job = _job(path, out_dir / f"{name}.png", num_images, list(suffixes))
        outputs = files_of(job, grid)
        for file in outputs:  # e.g. a.png's a-grid.png against an input a-grid.png's own output
            if planned.setdefault(file.name.casefold(), path) != path:
                raise InvalidInputError(f"inputs {planned[file.name.casefold()].name} and {path.name} would both write "
                                        f"{file.name}; rename one")
        existing = [o for o in outputs if o.exists()]
        earlier = None if overwrite or len(existing) == len(outputs) else \
            _made_earlier(path, out_dir, name, num_images, list(suffixes), grid)
        if earlier is not None:
            plan.skipped.append((path, f"its output exists as {earlier.name} (named by an earlier edgesd; --overwrite "
                                       "to redo it under its name now)"))
        elif overwrite or not existing:
            plan.jobs.append(job)
        elif len(existing) == len(outputs):
            plan.skipped.append((path, "its output exists (--overwrite to redo)"))
        else:
            plan.skipped.append((path, f"{len(existing)} of its {len(outputs)} outputs exist (--overwrite to redo all)"))
    _check_outputs([*inputs, *other_inputs], plan.jobs, grid)
    return plan


def _check_outputs(inputs: list[Path], jobs: list[Job], grid: bool) -> None:
    """Before any work: each output is an image format, no output is an input, and every output
    folder can be written (temporaries a killed run left there are removed)."""
    outputs = [file for job in jobs for file in files_of(job, grid)]
    for file in outputs:
        image_format(file)
    taken = {_identity(p) for p in inputs}
    clash = next((file for file in outputs if _identity(file) in taken), None)
    if clash is not None:
        raise InvalidInputError(f"output {clash} is an input; choose another --output (inputs are never replaced, "
                                "not even with --overwrite)")
    for folder in dict.fromkeys(file.parent for file in outputs):
        remove_stale(folder)
        check_writable(folder, outputs[0].name)


def _identity(path: Path):
    """What makes two paths one file: its device and inode if it exists, else its resolved path."""
    try:
        stat = path.stat()
        return stat.st_dev, stat.st_ino
    except OSError:
        return str(path.resolve()).casefold()


def _same(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and _identity(a) == _identity(b)


def _output_name(path: Path) -> str:
    """An input's output name without suffix, from its own name alone: a PNG's stem, else its full name."""
    return path.stem if path.suffix.lower() == ".png" else path.name


def _made_earlier(path: Path, out_dir: Path, name: str, num_images: int, suffixes: list[str], grid: bool) -> Path | None:
    """The first output of `path` as an earlier edgesd named it (its stem, or its full name where stems
    clashed), if all of that job's files are there and their parameters say they were made from this input."""
    for legacy in dict.fromkeys((path.stem, path.name)):
        if legacy == name:
            continue
        files = files_of(_job(path, out_dir / f"{legacy}.png", num_images, suffixes), grid)
        if all(file.exists() for file in files) and _made_from(files[0], path):
            return files[0]
    return None


def _made_from(output: Path, image: Path) -> bool:
    try:
        return read_parameters(output).get("input_sha256") == image_sha256(load_image(image))
    except EdgesdError:
        return False


def _output_names(inputs: list[Path]) -> dict[Path, str]:
    """Input -> output name without suffix (`_output_name`); two inputs whose names would clash
    (compared case-insensitively, as on macOS and Windows file systems) are refused."""
    names = {path: _output_name(path) for path in inputs}
    by_name = defaultdict(list)
    for path, name in names.items():
        by_name[name.casefold()].append(path.name)
    clashes = [sorted(group) for group in by_name.values() if len(group) > 1]
    if clashes:
        raise InvalidInputError(f"inputs {' and '.join(clashes[0])} would write the same output; rename one")
    return names
