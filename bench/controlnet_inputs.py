"""What the ControlNet residual inputs cost a call without a ControlNet (issue 22: at most 2% slower, 5%
bigger): a UNet exported before them (edgesd 8521bcf or older) against the same weights exported with
them, fed the broadcast zeros the runtime feeds.

    python bench/controlnet_inputs.py OLD_MODEL NEW_MODEL --resolution 512 --rounds 5 --out results/controlnet-inputs-sd15-512.json

Each engine compiles both UNets in one process; calls alternate old/new, guidance's batch of 2, so
both see the same machine. Also the UNet folders' sizes per format.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from compare import environment

SCHEMA = "edgesd-bench-controlnet-inputs/1"


def feeds(folder, session, resolution: int) -> dict:
    from edgesd.models.unet import no_residuals

    rng = np.random.default_rng(0)
    side = resolution // folder.manifest["vae_scale_factor"]
    unet = folder.unet_config
    base = {"sample": rng.standard_normal((2, unet["in_channels"], side, side), dtype=np.float32),
            "timestep": np.asarray(501, dtype=session.input_types["timestep"]),
            "encoder_hidden_states": rng.standard_normal((2, 77, unet["cross_attention_dim"]), dtype=np.float32)}
    return {**base, **{k: v for k, v in no_residuals(unet).items() if k in session.input_types}}


def folder_bytes(folder, fmt: str) -> int:
    from edgesd.sessions import BACKEND_OF_FORMAT

    return sum(f.stat().st_size for f in (folder.path / "unet").iterdir() if f.name in BACKEND_OF_FORMAT[fmt].files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from edgesd.model_folder import open_model_folder
    from edgesd.sessions import BACKEND_OF_FORMAT, open_session

    folders = {"old": open_model_folder(args.old), "new": open_model_folder(args.new)}
    assert not folders["old"].manifest.get("unet_controlnet_inputs") and folders["new"].manifest.get("unet_controlnet_inputs")
    result = {"schema": SCHEMA, "environment": environment(), "resolution": args.resolution, "engines": {}}
    for fmt, spec in BACKEND_OF_FORMAT.items():
        sessions = {k: open_session(spec.name, f.model_file("unet", fmt), "cpu", "auto") for k, f in folders.items()}
        inputs = {k: feeds(folders[k], s, args.resolution) for k, s in sessions.items()}
        times = {k: [] for k in sessions}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for k, session in sessions.items():
                start = time.perf_counter()
                session.run(inputs[k])
                if round_:
                    times[k].append(time.perf_counter() - start)
        old, new = (statistics.median(times[k]) for k in ("old", "new"))
        sizes = {k: folder_bytes(f, fmt) for k, f in folders.items()}
        result["engines"][spec.name] = {"unet_call_s": times, "median_s": {"old": old, "new": new}, "slower": new / old - 1,
                                        "unet_bytes": sizes, "bigger": sizes["new"] / sizes["old"] - 1}
        print(f"{spec.name}: UNet call {old:.3f}s -> {new:.3f}s ({new / old - 1:+.1%}); "
              f"folder {sizes['old'] / 2**20:.1f} -> {sizes['new'] / 2**20:.1f} MiB ({sizes['new'] / sizes['old'] - 1:+.2%})")
        del sessions
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
