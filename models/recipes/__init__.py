"""Recipes: diffusers configs of known architectures, for random-weight test and benchmark models.

Each `NAME.json` holds the configs of one architecture (text encoder, tokenizer, unet, vae,
scheduler), its model family and recommended img2img defaults, and for real models the hub id
(`source`) whose defaults it also supplies.
"""

import json
from importlib import resources

from edgesd.errors import EdgesdError


def names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load(name: str) -> dict:
    if name not in names():
        raise EdgesdError(f"unknown recipe {name!r}; known recipes: {', '.join(names())}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


def for_source(source_id: str) -> dict | None:
    """The recipe whose `source` is this hub id, if any (gives its family and defaults)."""
    for name in names():
        recipe = load(name)
        if recipe.get("source") == source_id:
            return recipe
    return None
