"""What a replayed image names but cannot carry: its LoRA files and its VAE folder. Images store names
and hashes, never paths (they are shared), so `--replay` looks for them by name where people keep
them: the current folder, the replayed image's folder and the folder holding the model folder
(models/ beside models/sd-turbo); a candidate counts only if its sha256 is the recorded one. A name
that is not a plain file name (a path, "..": a shared image is untrusted) is never looked up."""

from pathlib import Path

from edgesd.errors import EdgesdError
from edgesd.lora import Lora, read_lora
from edgesd.model_folder import ModelFolder, open_vae_folder, sha256


def places(replayed: Path, model: str | Path | None) -> list[Path]:
    """Where recorded files are looked for, in order."""
    found = [Path.cwd(), replayed.parent]
    if model is not None and Path(model).is_dir():
        found.append(Path(model).resolve().parent)
    return list(dict.fromkeys(p.resolve() for p in found))


def given_loras(specs: list[tuple[str, float | None]], stored: dict) -> list[Lora]:
    """LoRAs given as (path, weight or None): one without a weight gets the weight `stored` (a replayed
    image's parameters) records for its file, by sha256, else 1."""
    recorded = {entry["sha256"]: entry["weight"] for entry in stored.get("loras", [])}
    loras = []
    for path, weight in specs:
        lora = read_lora(path) if weight is None else read_lora(path, weight)
        if weight is None and lora.sha256 in recorded:
            lora.weight = recorded[lora.sha256]
        loras.append(lora)
    return loras


def recorded_loras(stored: dict, where: list[Path]) -> list[Lora]:
    """The recorded LoRAs found (by file name and sha256), with their recorded weights."""
    found = []
    for entry in filter(lambda entry: _plain(entry["file"]), stored.get("loras", [])):
        path = next((place / entry["file"] for place in where if _same_file(place / entry["file"], entry["sha256"])), None)
        if path is not None:
            found.append(read_lora(path, entry["weight"]))
    return found


def recorded_vae(stored: dict, where: list[Path]) -> tuple[ModelFolder, bool] | None:
    """The recorded VAE folder (by name and manifest sha256) and whether it decoded only, if found."""
    vae = stored.get("vae")
    for place in where if vae and _plain(vae["folder"]) else ():
        try:
            folder = open_vae_folder(place / vae["folder"])
        except EdgesdError:
            continue
        if folder.manifest_sha256 == vae["manifest_sha256"]:
            return folder, vae["replaces"] == ["vae_decoder"]
    return None


def _plain(name: str) -> bool:
    return name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _same_file(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest
