"""Check each exported submodel against the torch module it came from, on random inputs.

Every output the runtime reads is compared, by name; the recorded figure is the max absolute
deviation over all of them, and an export whose deviation is far beyond float32 noise in any output
is refused rather than written.
"""

import numpy as np
import torch

from edgesd.errors import EdgesdError
from edgesd.sessions import open_session
from edgesd.sessions.base import output

TOLERANCE = 1e-2  # relative to the reference's max |value|: far above fp32 noise, far below a broken graph


def validation_inputs(pipe, seed: int = 0) -> dict[str, tuple]:
    """(torch callable -> {output name: tensor}, engine feeds) per submodel, at the model's native size."""
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
        "text_encoder": (lambda: dict(zip(("last_hidden_state", "pooler_output"), text_encoder(torch.from_numpy(ids))[:2])),
                         {"input_ids": ids}),
        "unet": (
            lambda: {"out_sample": unet(torch.from_numpy(latent), torch.tensor(t), torch.from_numpy(hidden)).sample},
            {"sample": latent, "timestep": np.asarray(t), "encoder_hidden_states": hidden},
        ),
        "vae_encoder": (lambda: {"latent_parameters": vae.encode(torch.from_numpy(pixels)).latent_dist.parameters},
                        {"sample": pixels}),
        "vae_decoder": (lambda: {"sample": vae.decode(torch.from_numpy(z)).sample}, {"latent_sample": z}),
    }


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
