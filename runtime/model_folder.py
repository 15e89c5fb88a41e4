"""The model folder: what `edgesd export` writes (edgesd.json + submodel folders) or what
optimum's exporters write (read as they are, the manifest synthesised from their configs)."""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgesd.cache import cache_root
from edgesd.errors import ModelFolderError
from edgesd.formats import FORMATS
from edgesd.schema import (FORMAT_VERSION, SDXL_CONDITIONING, SUBMODELS, TEXT_ENCODERS, VAE_SUBMODELS, SchedulerConfig,
                           UNetConfig, VaeConfig, check_config, check_manifest)

MANIFEST = "edgesd.json"
DIFFUSERS_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5, "strength": 0.8}
FAMILY_DEFAULTS = {"sdxl": {"guidance_scale": 5.0, "strength": 0.3}}  # StableDiffusionXLImg2ImgPipeline's


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def manifest_sha256(self) -> str:
        """Identifies the exact model (its manifest holds every file's hash)."""
        manifest = self.path / MANIFEST
        return sha256(manifest) if manifest.exists() else ""

    @property
    def defaults(self) -> dict:
        """The folder's recommended call settings (from its recipe), else diffusers' for its family."""
        return {**DIFFUSERS_DEFAULTS, **FAMILY_DEFAULTS.get(self.manifest.get("family"), {}), **self.manifest.get("defaults", {})}

    @property
    def submodels(self) -> tuple[str, ...]:
        """The submodels this folder has, in SUBMODELS order (text encoders first, as they run)."""
        return tuple(name for name in SUBMODELS if name in self.manifest["submodels"])

    @property
    def vae_config(self) -> dict:
        file = self.path / "vae_decoder" / "config.json"
        return check_config(VaeConfig, _read_json(file), file)

    @property
    def vae_sample_size(self) -> int:
        """The VAE's native image size (the tile size when tiling)."""
        size = self.vae_config.get("sample_size", 512)
        return size[0] if isinstance(size, list) else size

    @property
    def native_size(self) -> int:
        """The side the model was trained at, in pixels (the UNet's sample size x the VAE's factor)."""
        size = self.unet_config.get("sample_size", 64)
        return (size[0] if isinstance(size, list) else size) * self.manifest["vae_scale_factor"]

    @property
    def unet_config(self) -> dict:
        file = self.path / "unet" / "config.json"
        return check_config(UNetConfig, _read_json(file), file)

    @property
    def unet_latent_multiple(self) -> int:
        """What latent sides must be multiples of. 1 where the UNet was exported on diffusers'
        size-following path (manifest `unet_any_size`, edgesd export since 0.2); else its downsampling
        2 ** (levels - 1): folders exported earlier or by optimum upsample by a fixed 2x."""
        if self.manifest.get("unet_any_size"):
            return 1
        return 2 ** (len(self.unet_config["block_out_channels"]) - 1)

    @property
    def scheduler_config(self) -> dict:
        file = self.path / "scheduler" / "scheduler_config.json"
        return check_config(SchedulerConfig, _read_json(file), file)

    @property
    def common_formats(self) -> list[str]:
        """Formats every submodel has (what a backend can run the whole folder from)."""
        first, *rest = self.manifest["submodels"]
        return [f for f in self.formats(first) if all(f in self.formats(s) for s in rest)]

    def formats(self, submodel: str = "unet") -> list[str]:
        return list(self.manifest["submodels"][submodel]["formats"])

    def model_file(self, submodel: str, fmt: str) -> Path:
        return self.path / submodel / FORMATS[fmt].main_file

    def verify(self, hashes: bool = True, formats: list[str] | None = None, stamps: dict | None = None) -> list[str]:
        """Problems found: missing or empty files, wrong sizes and (if `hashes`) sha256 mismatches, for
        all formats or only `formats`, and the files every format shares (tokenizer, configs). With
        `stamps` ({path: [size, mtime_ns, ctime_ns, inode, sha256]}, updated here), a file verified
        before and unchanged since is not hashed again."""
        problems = []
        for name, meta in self.listed_files(formats).items():
            file = self.path / name
            if not file.is_file():
                problems.append(f"{name}: missing")
            elif file.stat().st_size != meta.get("bytes", file.stat().st_size) or file.stat().st_size == 0:
                problems.append(f"{name}: {file.stat().st_size} bytes, expected {meta.get('bytes', 'more')}")
            elif hashes and "sha256" in meta and not _hash_matches(file, meta["sha256"], stamps):
                problems.append(f"{name}: sha256 mismatch (file changed or corrupt)")
        return problems

    def listed_files(self, formats: list[str] | None = None) -> dict[str, dict]:
        """Every file the manifest lists, of all formats or only `formats`, and the files every format
        shares (relative path -> its size and sha256, where given)."""
        return {**{f"{submodel}/{name}": meta for submodel, entry in self.manifest["submodels"].items()
                   for fmt, info in entry["formats"].items() if formats is None or fmt in formats
                   for name, meta in info.get("files", {}).items()},
                **self.manifest.get("support_files", {})}

    def verify_once(self, formats: list[str]) -> None:
        """Hash the files of `formats` the first time they are used (and after they change); raise on a mismatch."""
        stamps_file = cache_root() / "verified.json"
        try:
            stamps = json.loads(stamps_file.read_text())
        except (OSError, ValueError, RecursionError):
            stamps = {}
        if not isinstance(stamps, dict):  # a damaged cache file costs only re-hashing
            stamps = {}
        problems = self.verify(hashes=True, formats=formats, stamps=stamps)
        if problems:
            raise ModelFolderError(f"{self.path} is damaged: {'; '.join(problems)}; re-export it")
        try:
            stamps_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamps_file.with_name(f".verified.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stamps))
            os.replace(tmp, stamps_file)
        except OSError:  # a read-only cache only costs re-hashing next time
            pass


def _hash_matches(file: Path, expected: str, stamps: dict | None) -> bool:
    stat = file.stat()  # ctime and inode change whenever the content does, even if size and mtime are restored
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, expected]
    key = str(file.resolve())
    if stamps is not None and stamps.get(key) == stamp:
        return True
    if sha256(file) != expected:
        return False
    if stamps is not None:
        stamps[key] = stamp
    return True


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{file} is missing; re-export the model with `edgesd export`") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ModelFolderError(f"{file} is unreadable ({e}); re-export the model with `edgesd export`") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{file} holds a JSON {type(data).__name__}, not an object; re-export the model with `edgesd export`")
    return data


def open_model_folder(path: str | Path) -> ModelFolder:
    """Open an edgesd or optimum model folder; cheap checks only (files present, sizes match)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist; create it with `edgesd export SOURCE -o {path}`")
    manifest = _present_formats(path, _read_manifest(path)) if (path / MANIFEST).exists() else _manifest_from_optimum_folder(path)
    if manifest.get("kind") in COMPONENTS:
        raise ModelFolderError(f"{path} is a {COMPONENTS[manifest['kind']][0]} folder, not a whole model: give it as "
                               f"{COMPONENTS[manifest['kind']][1]} next to a model folder")
    return _checked(ModelFolder(path, manifest))  # whether its family runs here is families.family_of's to say


# component folder kind -> (what it is called, how it is given, how one is made)
COMPONENTS = {"vae": ("VAE", "--vae (vae=)", "edgesd export madebyollin/taesd -o models/taesd"),
              "controlnet": ("ControlNet", "--controlnet (controlnet=)",
                             "edgesd export lllyasviel/control_v11p_sd15_canny -o models/controlnet-canny"),
              "depth": ("depth estimator", "--depth-model (estimator=)", "edgesd export Intel/dpt-hybrid-midas -o models/depth")}


def open_component_folder(path: str | Path, kind: str) -> ModelFolder:
    """Open a component folder that `edgesd export` wrote: a VAE (a tiny VAE such as madebyollin/taesd,
    replacing a model's), a ControlNet, or a depth estimator (for depth control maps)."""
    path = Path(path)
    name, _, make = COMPONENTS[kind]
    if not (path / MANIFEST).is_file():
        raise ModelFolderError(f"{path} is not a {name} folder (no {MANIFEST}); make one with `{make}`")
    manifest = _present_formats(path, _read_manifest(path))  # as a model's: a format deleted to save space
    if manifest.get("kind") != kind:  # (its path is another's: the export goes elsewhere)
        other = f"{COMPONENTS[manifest['kind']][0]} folder" if manifest["kind"] in COMPONENTS else "whole model"
        raise ModelFolderError(f"{path} is a {other}, not a {name} folder (give it as "
                               f"{COMPONENTS.get(manifest['kind'], ('', 'MODEL'))[1]}); make one with `{make}`")
    return _checked(ModelFolder(path, manifest))


def open_vae_folder(path: str | Path) -> ModelFolder:
    return open_component_folder(path, "vae")


def open_any_folder(path: str | Path) -> ModelFolder:
    """A model folder or a component folder (what `edgesd info` describes)."""
    path = Path(path)
    kind = _read_manifest(path).get("kind") if (path / MANIFEST).is_file() else "model"
    return open_component_folder(path, kind) if kind in COMPONENTS else open_model_folder(path)


def _present_formats(path: Path, manifest: dict) -> dict:
    """The manifest without the formats none of whose files are here (a download of one engine's
    files, or a format deleted to save space); a format partly here stays, and is reported damaged."""
    def present(fmt: str) -> bool:
        return any((path / submodel / name).exists() for submodel, entry in manifest.get("submodels", {}).items()
                   for name in entry["formats"].get(fmt, {}).get("files", {}))

    kept = {fmt for entry in manifest.get("submodels", {}).values() for fmt in entry["formats"] if present(fmt)}
    submodels = {submodel: {**entry, "formats": {f: spec for f, spec in entry["formats"].items() if f in kept}}
                 for submodel, entry in manifest.get("submodels", {}).items()}
    return {**manifest, "submodels": submodels} if kept else manifest


def _read_manifest(path: Path) -> dict:
    return check_manifest(_read_json(path / MANIFEST), path / MANIFEST)


def _checked(folder: ModelFolder) -> ModelFolder:
    problems = folder.verify(hashes=False)
    if problems:
        raise ModelFolderError(f"{folder.path} is incomplete or damaged: {'; '.join(problems)}; re-export it")
    if folder.manifest["kind"] == "model":  # the numbers the runtime sizes arrays by agree with each other
        latent, unet, vae = folder.manifest["latent_channels"], folder.unet_config, folder.vae_config
        if vae.get("latent_channels", 4) != latent or unet.get("in_channels", 4) not in (latent, 2 * latent + 1):
            raise ModelFolderError(f"{folder.path} does not add up: the manifest says {latent} latent channels, the VAE's "
                                   f"config {vae.get('latent_channels', 4)}, the UNet takes {unet.get('in_channels', 4)} "
                                   f"(it should take {latent}, or {2 * latent + 1} for inpainting); re-export it")
    return folder


def _manifest_from_optimum_folder(path: Path) -> dict:
    """Synthesise a manifest for a folder written by `optimum-cli export onnx|openvino` (SD or SDXL:
    a second text encoder, or a refiner's UNet conditioned on time ids; SDXL's pipeline config is
    read from model_index.json, which optimum copies)."""
    sdxl = _read_json(path / "unet" / "config.json").get("addition_embed_type") == "text_time"
    present = [name for name in SUBMODELS if (path / name).is_dir()]
    needed = ["text_encoder_2" if sdxl else "text_encoder", "unet", "vae_encoder", "vae_decoder"]
    submodels = {}
    for submodel in dict.fromkeys(needed + [name for name in present if sdxl or name != "text_encoder_2"]):
        # every file the engine reads must be there and not empty (checked by _checked)
        formats = {fmt: {"files": {name: {} for name in b.files if name == b.main_file or name.endswith(".bin")
                                   or (path / submodel / name).exists()}}
                   for fmt, b in FORMATS.items() if (path / submodel / b.main_file).exists()}
        if not formats:
            raise ModelFolderError(
                f"{path} is not a model folder: {submodel}/ has neither model.onnx nor openvino_model.xml "
                f"(and there is no {MANIFEST}); export it with `edgesd export SOURCE -o {path}`"
            )
        submodels[submodel] = {"formats": formats}
    vae = check_config(VaeConfig, _read_json(path / "vae_decoder" / "config.json"), path / "vae_decoder" / "config.json")
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    tokenizers = [tokenizer_folder(name) for name in submodels if name in TEXT_ENCODERS]
    support = [name for t in tokenizers for name in ([f"{t}/tokenizer.json"] if (path / t / "tokenizer.json").exists()
                                                     else [f"{t}/vocab.json", f"{t}/merges.txt"])]
    extra = {}
    if sdxl:
        index = _read_json(path / "model_index.json") if (path / "model_index.json").exists() else {}
        extra["conditioning"] = {key: index[key] for key in SDXL_CONDITIONING if key in index}
    return check_manifest({
        "format_version": FORMAT_VERSION,
        "family": "sdxl" if sdxl else "sd",
        "prediction_type": scheduler.get("prediction_type", "epsilon"),
        "latent_channels": vae.get("latent_channels", 4),
        "vae_scaling_factor": vae.get("scaling_factor", 0.18215),
        "vae_scale_factor": 2 ** (len(vae["block_out_channels"]) - 1),
        **extra,
        "submodels": submodels,
        "support_files": {name: {} for name in [*support, "scheduler/scheduler_config.json",
                                                *(f"{s}/config.json" for s in ("unet", "vae_decoder"))]},
        "provenance": {"source": "optimum export (no edgesd.json)"},
    }, path / "model_index.json" if sdxl else path / "scheduler" / "scheduler_config.json")


def tokenizer_folder(text_encoder: str) -> str:
    """The tokenizer's folder of a text encoder (text_encoder_2 -> tokenizer_2), as diffusers lays them out."""
    return text_encoder.replace("text_encoder", "tokenizer")
