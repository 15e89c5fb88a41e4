"""Turn an export SOURCE into a local diffusers folder: a folder as is, `random:NAME` built from
a recipe, a single-file checkpoint read by diffusers (single_file.py), or a hub id downloaded with
huggingface_hub (its progress bars on a terminal)."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edgesd.errors import EdgesdError
from edgesd.export import recipes

log = logging.getLogger("edgesd")
# Only what an SD/SDXL img2img export reads: fp32 safetensors and configs, not fp16/ckpt/bin variants
# (a tiny VAE repo such as madebyollin/taesd: the two files at its root; a depth estimator: transformers'
# model.safetensors and its image processor's config).
_HUB_FILES = [
    "config.json",
    "diffusion_pytorch_model.safetensors",
    "model_index.json",
    "model.safetensors",
    "preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "*/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]


class HubUnreachableError(EdgesdError):
    """The hub could not be reached and the model is not in the local cache."""


@dataclass
class Source:
    spec: str  # what the user passed
    folder: Path  # a local diffusers folder
    revision: str | None = None
    recipe: dict = field(default_factory=dict)  # family and defaults, when known


def resolve_source(spec: str, scratch: Path, config: str | None = None) -> Source:
    from edgesd.export.single_file import is_single_file, read_single_file

    if config is not None and not is_single_file(spec):
        raise EdgesdError("--config is for single-file checkpoints (the layout their weights lack); drop it")
    if is_single_file(spec):
        if not Path(spec).is_file():
            raise EdgesdError(f"{spec} does not exist")
        folder, family = read_single_file(Path(spec), scratch, config)
        return Source(spec, folder, recipe={"family": family})
    if spec.startswith("random:"):
        from edgesd.export.random_model import random_source

        folder = scratch / "random-source"
        return Source(spec, folder, recipe=random_source(spec, folder))
    if Path(spec).exists():
        return Source(spec, Path(spec))
    return _download(spec)


def _download(repo_id: str, revision: str | None = None) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    log.info("downloading %s from the Hugging Face hub", repo_id)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES))
    except LocalEntryNotFoundError:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub to download {repo_id!r} (offline?); pass a local diffusers folder "
            "or random:RECIPE instead"
        ) from None
    except (HfHubHTTPError, ValueError) as e:
        raise EdgesdError(f"cannot download {repo_id!r}: {str(e).splitlines()[0]}; check the id, or pass a local folder") from None
    return Source(repo_id, folder, revision=folder.name, recipe=recipes.for_source(repo_id) or {})
