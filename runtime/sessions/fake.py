"""Closed-form stand-ins for the four submodels, and a model folder to go with them, so pipeline
logic (draw order, batching, guidance, blending, tiling, callbacks) is tested in milliseconds with
no export and no engine. Nothing here is numerically meaningful; it is only cheap and deterministic.
"""

import json
from pathlib import Path

import numpy as np

from edgesd.model_folder import FORMAT_VERSION, MANIFEST, ModelFolder

SCALE = 8  # pixels per latent side of the fake VAE
LATENT = 4
SD_SUBMODELS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
OUTPUT_NAMES = {"text_encoder": "last_hidden_state", "unet": "out_sample", "vae_encoder": "latent_parameters",
                "vae_decoder": "sample"}  # as optimum's exporters name them


class FakeSession:
    """One submodel as a small numpy function; `calls` keeps every feed's shapes."""

    backend = "fake"
    device = "cpu"

    def __init__(self, name: str):
        self.name = name
        self.calls: list[dict] = []
        self.input_types = {"text_encoder": {"input_ids": np.dtype(np.int64)},
                            "unet": {"sample": np.dtype(np.float32), "timestep": np.dtype(np.float32),
                                     "encoder_hidden_states": np.dtype(np.float32)},
                            "vae_encoder": {"sample": np.dtype(np.float32)},
                            "vae_decoder": {"latent_sample": np.dtype(np.float32)}}[name]

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        self.calls.append({k: np.shape(v) for k, v in feeds.items()})
        return {OUTPUT_NAMES[self.name]: getattr(self, self.name)(**feeds)}

    @staticmethod
    def text_encoder(input_ids):  # (B, 77) -> (B, 77, 8)
        return np.repeat((input_ids.astype(np.float32) / 49408)[..., None], 8, axis=2)

    @staticmethod
    def unet(sample, timestep, encoder_hidden_states, **more):  # noise ~ 0.1 x latents, shifted by the prompt
        shift = encoder_hidden_states.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)  # (a family's other inputs: more)
        return (0.1 * sample[:, :LATENT] + shift + np.float32(timestep) / 1000).astype(np.float32)

    @staticmethod
    def vae_encoder(sample):  # (B, 3, H, W) -> (B, 8, H/8, W/8): mean = pooled pixels, small logvar
        b, c, h, w = sample.shape
        pooled = sample.reshape(b, c, h // SCALE, SCALE, w // SCALE, SCALE).mean(axis=(3, 5))
        mean = np.concatenate([pooled, pooled[:, :1]], axis=1)
        return np.concatenate([mean, np.full_like(mean, -8.0)], axis=1).astype(np.float32)

    @staticmethod
    def vae_decoder(latent_sample):  # (B, 4, h, w) -> (B, 3, 8h, 8w)
        up = latent_sample[:, :3].repeat(SCALE, axis=2).repeat(SCALE, axis=3)
        return np.tanh(up).astype(np.float32)


def fake_model_folder(path: Path, unet_in_channels: int = 4, scheduler: dict | None = None) -> ModelFolder:
    """A model folder whose configs and tokenizer are real but whose submodels are FakeSessions."""
    configs = {
        "unet": {"in_channels": unet_in_channels, "sample_size": 8, "block_out_channels": [8, 8],
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "attention_head_dim": 2},
        "vae_decoder": {"block_out_channels": [8, 8, 8, 8], "latent_channels": LATENT, "sample_size": 64,
                        "scaling_factor": 0.18215},
    }
    for name, config in configs.items():
        (path / name).mkdir(parents=True, exist_ok=True)
        (path / name / "config.json").write_text(json.dumps(config))
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or {
        "_class_name": "EulerAncestralDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "beta_end": 0.012, "num_train_timesteps": 1000}))
    (path / "tokenizer").mkdir(exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {token: i for i, token in enumerate([*letters, *(f"{c}</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"])}
    (path / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (path / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    manifest = {"format_version": FORMAT_VERSION, "family": "sd1", "prediction_type": "epsilon", "latent_channels": LATENT,
                "vae_scaling_factor": 0.18215, "vae_scale_factor": SCALE, "sample_size": 64, "unet_any_size": True,
                "submodels": {name: {"formats": {"onnx": {"precision": "fp32", "files": {"model.onnx": {}}}}} for name in SD_SUBMODELS}}
    for name in SD_SUBMODELS:  # a placeholder where the engine's file would be (FakeSessions never read it)
        (path / name).mkdir(exist_ok=True)
        (path / name / "model.onnx").write_bytes(b"fake session")
    (path / MANIFEST).write_text(json.dumps(manifest))
    return ModelFolder(path, manifest)
