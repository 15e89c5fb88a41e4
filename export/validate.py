"""Check each exported submodel against the torch module it came from, on random inputs.

Every output the runtime reads is compared, by name; the recorded figure is the max absolute
deviation over all of them, and an export whose deviation is far beyond float32 noise in any output
is refused rather than written.
"""

import numpy as np
import torch

from edgesd.errors import EdgesdError
from edgesd.export.controlnet import residual_feeds
from edgesd.models.controlnet import DOWN_RESIDUAL, MID_RESIDUAL
from edgesd.sessions import open_session
from edgesd.sessions.base import output

TOLERANCE = 1e-2  # relative to the reference's max |value|: far above fp32 noise, far below a broken graph


def validation_inputs(pipe, seed: int = 0) -> dict[str, tuple]:
    """(torch callable -> {output name: tensor}, engine feeds) per submodel, at the model's native size."""
    rng = np.random.default_rng(seed)
    unet, vae = pipe.unet, pipe.vae
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    side = unet.config.sample_size
    latent = rng.standard_normal((2, unet.config.in_channels, side, side), dtype=np.float32)
    hidden = rng.standard_normal((2, 77, unet.config.cross_attention_dim), dtype=np.float32)
    pixels = rng.uniform(-1, 1, (1, 3, side * scale, side * scale)).astype(np.float32)
    z = rng.standard_normal((1, vae.config.latent_channels, side, side), dtype=np.float32)
    t = np.float32(501.0)
    added = _added_conditioning(pipe, rng, side * scale)
    residuals = residual_feeds(unet.config, rng, 2, side, side)  # ControlNet's: a miswired input shows
    down = [torch.from_numpy(residuals[DOWN_RESIDUAL.format(i)]) for i in range(len(residuals) - 1)]
    inputs = {
        "unet": (
            lambda: {"out_sample": unet(torch.from_numpy(latent), torch.tensor(t), torch.from_numpy(hidden),
                                        added_cond_kwargs={k: torch.from_numpy(v) for k, v in added.items()} or None,
                                        down_block_additional_residuals=down,
                                        mid_block_additional_residual=torch.from_numpy(residuals[MID_RESIDUAL])).sample},
            {"sample": latent, "timestep": np.asarray(t), "encoder_hidden_states": hidden, **added, **residuals},
        ),
        "vae_encoder": (lambda: {"latent_parameters": vae.encode(torch.from_numpy(pixels)).latent_dist.parameters},
                        {"sample": pixels}),
        "vae_decoder": (lambda: {"sample": vae.decode(torch.from_numpy(z)).sample}, {"latent_sample": z}),
    }
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            ids = rng.integers(0, getattr(pipe, name).config.vocab_size, (2, 77))
            inputs[name] = (lambda encoder=getattr(pipe, name), ids=ids: _named_outputs(encoder(torch.from_numpy(ids))),
                            {"input_ids": ids})
    return inputs


def _added_conditioning(pipe, rng, size: int) -> dict[str, np.ndarray]:
    """SDXL's UNet inputs beside the text's: pooled text embeddings and time ids (5 with an aesthetic score)."""
    if pipe.unet.config.addition_embed_type != "text_time":
        return {}
    pooled = rng.standard_normal((2, pipe.text_encoder_2.config.projection_dim), dtype=np.float32)
    time_ids = [size, size, 0, 0, 6.0] if pipe.config.requires_aesthetics_score else [size, size, 0, 0, size, size]
    return {"text_embeds": pooled, "time_ids": np.array([time_ids] * 2, np.float32)}


def _named_outputs(outputs) -> dict:
    """A CLIP text model's outputs by the exported names: hidden_states.i for each layer's (when exported)."""
    named = {key: value for key, value in outputs.items() if key != "hidden_states"}
    named.update({f"hidden_states.{i}": h for i, h in enumerate(outputs.get("hidden_states") or ())})
    return named


def deviations(reference: dict[str, np.ndarray], feeds: dict, backend: str, path) -> dict[str, float]:
    """Max |exported - reference| of each output `reference` names, the exported model run in fp32."""
    session = open_session(backend, path, "cpu", "fp32")
    feeds = {name: np.asarray(value).astype(session.input_types[name]) for name, value in feeds.items()}
    got = session.run(feeds)
    return {name: float(np.abs(output(got, name).astype(np.float32) - expected).max()) for name, expected in reference.items()}


def max_deviation(submodel: str, reference: dict[str, np.ndarray], feeds: dict, backend: str, path) -> float:
    """The largest deviation over the outputs; an output far off is an error naming it."""
    found = deviations(reference, feeds, backend, path)
    for name, deviation in found.items():
        if deviation > TOLERANCE * float(np.abs(reference[name]).max()):
            raise EdgesdError(
                f"exported {submodel} ({backend}) deviates from torch by {deviation:.3g} in its output {name}; the "
                "export is broken (report it with the model id and package versions)"
            )
    return max(found.values())


def reference_outputs(pipe) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
    with torch.no_grad():
        return {name: ({key: tensor.numpy() for key, tensor in fn().items()}, feeds)
                for name, (fn, feeds) in validation_inputs(pipe).items()}
