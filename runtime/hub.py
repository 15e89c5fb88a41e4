"""Ready exports from the Hugging Face hub, torch-free: a repo holding an edgesd model folder, or one
in optimum's ONNX / OpenVINO layout, downloaded with huggingface_hub (its cache, progress bars and
HF_HUB_OFFLINE) - only the files the chosen engine runs, plus configs and tokenizer."""

import logging
import re
from pathlib import Path, PurePath

from edgesd.errors import ModelFolderError
from edgesd.model_folder import MANIFEST
from edgesd.schema import SUBMODELS, TEXT_ENCODERS, VAE_SUBMODELS, hub_repo_id, hub_revision
from edgesd.sessions import BACKENDS, choose_backend

log = logging.getLogger("edgesd")
_METADATA = [MANIFEST, "model_index.json", "*/config.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(spec: str | Path) -> bool:
    """OWNER/REPO that is not a local path (a Path of it on Windows too). What looks like a path is one,
    found or not: it starts with '.', '/' or '~', or its OWNER part is a local folder (models/typo)."""
    posix = PurePath(spec).as_posix()
    return (not Path(spec).exists() and not str(spec).startswith((".", "/", "~", "\\"))
            and bool(_REPO_ID.fullmatch(posix)) and not Path(posix.split("/")[0]).is_dir())


def download(repo_id: str | Path, revision: str | None = None, backend: str = "auto", device: str = "auto",
             usable: list[str] | None = None) -> Path:
    """The local snapshot of `repo_id` with what `backend` needs (downloaded, or from the cache).
    `usable`: the formats the engine may be chosen among (e.g. those a --vae folder has too)."""
    repo_id = hub_repo_id(PurePath(repo_id).as_posix())
    if revision is not None:  # huggingface_hub writes refs/<revision> into its cache: never a path
        hub_revision(revision)
    listed = _remote_files(repo_id, revision)
    folder = _snapshot(repo_id, revision, _METADATA)
    present = (lambda name: name in listed) if listed is not None else (lambda name: (folder / name).exists())
    submodels = [name for name in SUBMODELS if any(present(f"{name}/{b.main_file}") for b in BACKENDS.values())]
    formats = [b.format for b in BACKENDS.values() if all(present(f"{submodel}/{b.main_file}") for submodel in submodels)]
    if not formats or not {"unet", *VAE_SUBMODELS} <= set(submodels) or not set(TEXT_ENCODERS) & set(submodels):
        raise ModelFolderError(f"{repo_id} is not an exported model (no model.onnx or openvino_model.xml for each of "
                               f"a text encoder, unet, {', '.join(VAE_SUBMODELS)}); export it with `edgesd export {repo_id} "
                               f"-o models/{repo_id.split('/')[-1]} --format both`")
    files = BACKENDS[choose_backend(backend, device, [f for f in formats if usable is None or f in usable])].files
    return _snapshot(repo_id, revision, _METADATA + [f"{submodel}/{file}" for submodel in submodels for file in files])


def hub_origin(folder: Path) -> dict | None:
    """{"repo": OWNER/REPO, "revision": commit} for a folder in the hub cache (what outputs record)."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return {"repo": parts[-3].removeprefix("models--").replace("--", "/", 1), "revision": parts[-1]}
    return None


def _remote_files(repo_id: str, revision: str | None) -> set[str] | None:
    """The repo's files when the hub answers; None offline or unreachable, when what the cache holds
    decides. (A branch is resolved again by each snapshot: the hub cache keeps refs by name.)"""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return {sibling.rfilename for sibling in HfApi().model_info(repo_id, revision=revision).siblings or []}
    except OSError:  # unreachable, or not found (said by the snapshot below, which knows the cache too)
        return None


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,  # .errors
                                       RevisionNotFoundError)  # only since huggingface_hub 0.25

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelFolderError(f"{repo_id}{'@' + revision if revision else ''} is neither a local folder nor a repo on the "
                               f"hub (or it is private): {str(e).splitlines()[0]}") from None
    except LocalEntryNotFoundError:
        raise ModelFolderError(f"{repo_id} is not in the local hub cache and the hub cannot be reached (offline?); "
                               "connect once to download it, or give a local model folder") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelFolderError(f"downloading {repo_id} failed: {str(e).splitlines()[0]}; run again to resume") from None
