"""Check each exported submodel against the torch module it came from, on random inputs.

The recorded figure is the max absolute deviation over all outputs; an export whose deviation
is far beyond float32 noise is refused rather than written.
"""

import numpy as np
import torch

from edgesd.errors import EdgesdError
from edgesd.sessions import open_session

TOLERANCE = 1e-2  # relative to the reference's max |value|: far above fp32 noise, far below a broken graph


def validation_inputs(pipe, seed: int = 0) -> dict[str, tuple]:
    """(torch callable, engine feeds) per submodel, at the model's native size."""
    rng = np.random.default_rng(seed)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    side = unet.config.sample_size
    latent = rng.standard_normal((2, unet.config.in_channels, side, side), dtype=np.float32)
    hidden = rng.standard_normal((2, 77, unet.config.cross_attention_dim), dtype=np.float32)
    pixels = rng.uniform(-1, 1, (1, 3, side * scale, side * scale)).astype(np.float32)
    z = rng.standard_normal((1, vae.config.latent_channels, side, side), dtype=np.float32)
    ids = rng.integers(0, text_encoder.config.vocab_size, (2, 77))
    t = np.float32(501.0)
    return {
        "text_encoder": (lambda: text_encoder(torch.from_numpy(ids))[0], {"input_ids": ids}),
        "unet": (
            lambda: unet(torch.from_numpy(latent), torch.tensor(t), torch.from_numpy(hidden)).sample,
            {"sample": latent, "timestep": np.asarray(t), "encoder_hidden_states": hidden},
        ),
        "vae_encoder": (lambda: vae.encode(torch.from_numpy(pixels)).latent_dist.parameters, {"sample": pixels}),
        "vae_decoder": (lambda: vae.decode(torch.from_numpy(z)).sample, {"latent_sample": z}),
    }


def max_deviation(submodel: str, reference, feeds: dict, backend: str, path) -> float:
    session = open_session(backend, path, "cpu", "fp32")
    feeds = {name: value.astype(session.input_types[name]) for name, value in feeds.items()}
    got = session.run(feeds)[0]
    deviation = float(np.abs(got - reference).max())
    if deviation > TOLERANCE * float(np.abs(reference).max()):
        raise EdgesdError(
            f"exported {submodel} ({backend}) deviates from torch by {deviation:.3g}; the export is broken "
            "(report it with the model id and package versions)"
        )
    return deviation


def reference_outputs(pipe) -> dict[str, tuple[np.ndarray, dict]]:
    with torch.no_grad():
        return {name: (fn().numpy(), feeds) for name, (fn, feeds) in validation_inputs(pipe).items()}
