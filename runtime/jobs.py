"""What an `edgesd img2img` invocation has to do: one input or a folder of inputs (resumable:
inputs whose outputs exist are skipped), and the generation parameters of a replayed PNG."""

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from edgesd.errors import InvalidInputError
from edgesd.outputs import PARAMETERS_KEY, output_paths

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass(frozen=True)
class Job:
    image: Path
    outputs: list[Path]


def plan_jobs(image: Path, output: Path | None, num_images: int, overwrite: bool) -> tuple[list[Job], list[Path]]:
    """(jobs to run, inputs skipped because their outputs exist). A single input whose output
    exists is an error instead: nothing is overwritten silently."""
    if image.is_dir():
        out_dir = output or image / "edgesd-out"
        if out_dir.exists() and not out_dir.is_dir():
            raise InvalidInputError(f"with a folder of inputs, --output must be a folder; {out_dir} is a file")
        inputs = sorted(p for p in image.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not inputs:
            raise InvalidInputError(f"{image} holds no {', '.join(sorted(IMAGE_SUFFIXES))} files")
        jobs, skipped = [], []
        for path in inputs:
            outputs = output_paths(out_dir / f"{path.stem}.png", num_images)
            if all(o.exists() for o in outputs) and not overwrite:
                skipped.append(path)
            else:
                jobs.append(Job(path, outputs))
        return jobs, skipped
    outputs = output_paths(output or Path("out.png"), num_images)
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not overwrite:
        raise InvalidInputError(f"{', '.join(existing)} already exists; pass --overwrite to replace it")
    return [Job(image, outputs)], []


def read_parameters(png: Path) -> dict:
    """The generation parameters edgesd stored in a PNG it wrote."""
    try:
        with Image.open(png) as im:
            text = im.text.get(PARAMETERS_KEY) if hasattr(im, "text") else None
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read {png}: {e}") from None
    if not text:
        raise InvalidInputError(f"{png} carries no edgesd parameters (only PNGs written by edgesd img2img do)")
    return json.loads(text)
