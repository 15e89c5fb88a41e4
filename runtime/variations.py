"""Variations side by side: `--strength 0.3,0.5,0.7` (and lists of seeds and guidance scales) run
every combination on one input; `--grid` lays the results out as a labelled contact sheet.

The pipeline keeps the last prompt encoding and the last image's VAE moments, so the runs of a
sweep pay only for what changes (noise, steps, decode)."""

import itertools
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from edgesd.errors import InvalidInputError

SWEPT = {"strength": "strength", "seed": "seed", "guidance_scale": "guidance"}  # setting -> CLI option


@dataclass(frozen=True)
class Variant:
    overrides: dict  # settings that differ from the base, e.g. {"strength": 0.5}
    suffix: str  # added to the output's stem, e.g. "-strength0.5"; "" for the only variant

    @property
    def label(self) -> str:
        return ", ".join(f"{SWEPT[k]} {v}" for k, v in self.overrides.items())


def parse_list(text: str | None, kind: type, option: str, low: float | None = None, high: float | None = None) -> list:
    """'0.3,0.5' -> [0.3, 0.5]; None -> [None] (the default); out-of-range values are one-line errors."""
    if text is None:
        return [None]
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InvalidInputError(f"{option} takes a number or a comma-separated list of numbers, got {text!r}") from None
    for value in values:
        if not math.isfinite(value):
            raise InvalidInputError(f"{option} must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise InvalidInputError(f"{option} must be {bounds}, got {value}")
    if not values:
        raise InvalidInputError(f"{option} is empty")
    return list(dict.fromkeys(values))  # a repeated value would name the same output twice


def variants(lists: dict[str, list]) -> list[Variant]:
    """Every combination of the swept settings, each named by the values that vary."""
    swept = {key: values for key, values in lists.items() if len(values) > 1}
    if not swept:
        return [Variant({}, "")]
    names = list(swept)
    return [Variant(dict(zip(names, combo)), "".join(f"-{SWEPT[k]}{v}" for k, v in zip(names, combo)))
            for combo in itertools.product(*(swept[k] for k in names))]


def contact_sheet(cells: list[tuple[Image.Image, str]], columns: int | None = None) -> Image.Image:
    """Images in a grid, each under its label (one line per comma-separated part); cells are widened
    to fit their labels, so small images stay readable."""
    if not cells:
        raise InvalidInputError("no images to put in a grid")
    font = ImageFont.load_default()
    lines = [label.split(", ") if label else [] for _, label in cells]
    line_height = font.getbbox("Ag")[3] + 3
    strip = max(len(parts) for parts in lines) * line_height + 4
    width = max([im.width for im, _ in cells] + [int(font.getlength(line)) + 8 for parts in lines for line in parts])
    height = max(im.height for im, _ in cells) + strip
    columns = columns or min(len(cells), 4)
    sheet = Image.new("RGB", (columns * width, -(-len(cells) // columns) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for n, ((image, _), parts) in enumerate(zip(cells, lines)):
        x, y = (n % columns) * width, (n // columns) * height
        for i, line in enumerate(parts):
            draw.text((x + 4, y + 2 + i * line_height), line, fill="black", font=font)
        sheet.paste(image, (x + (width - image.width) // 2, y + strip))
    return sheet
