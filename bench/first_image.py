"""The first image of a one-off run per engine (issue 25, point 7): a whole `edgesd img2img MODEL -i
IMAGE` command as a user types it (process start, import, load, OpenVINO's compile for the input's
shapes, the call, the save), once per engine and model, turns alternating so the machine's noise falls
on all alike. backend auto picks by what this measures (runtime/sessions/__init__.py).

    python bench/first_image.py MODEL_FOLDER [MODEL_FOLDER ...] [--resolution 256] [--rounds 3] [--steps N] \
        --out bench/results/first-image-NAME.json
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgesd import __version__
from edgesd.bench import bench_image
from edgesd.memory import weights_bytes
from edgesd.model_folder import open_model_folder

SCHEMA = "edgesd-bench-first-image/1"
BACKENDS = ("onnxruntime", "openvino")


def one_off(model: Path, image: Path, out: Path, backend: str, steps: int | None) -> dict:
    """Seconds of one whole command, and its own load and call times (--json)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", "img2img", str(model), "-i",
                           str(image), "-o", str(out), "-p", "a watercolor street", "--seed", "1", "--backend", backend,
                           "--overwrite", "--json", *(["--steps", str(steps)] if steps else [])],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result = json.loads(done.stdout)
    return {"command": seconds, "load": result["load_seconds"], "call": result["results"][0]["timings"]["total"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesd-first-image-"))
    image = work / "in.png"
    bench_image(args.resolution).save(image)
    runs = {(m.name, b): [] for m in args.models for b in BACKENDS}
    for k in range(args.rounds):
        order = [(m, b) for m in args.models for b in (BACKENDS if k % 2 == 0 else BACKENDS[::-1])]
        for model, backend in order:
            runs[model.name, backend].append(one_off(model, image, work / "out.png", backend, args.steps))
            print(f"round {k + 1}: {model.name} {backend} {runs[model.name, backend][-1]['command']:.2f} s", file=sys.stderr)
    models = {}
    for model in args.models:
        folder = open_model_folder(model)
        median = {b: {key: statistics.median(r[key] for r in runs[model.name, b]) for key in ("command", "load", "call")}
                  for b in BACKENDS}
        models[model.name] = {"weights_mib": weights_bytes(folder, "onnx", False) / 2**20, "runs": {b: runs[model.name, b] for b in BACKENDS},
                              "median": median,
                              "openvino_vs_onnxruntime": median["openvino"]["command"] / median["onnxruntime"]["command"]}
    result = {"schema": SCHEMA, "resolution": args.resolution, "rounds": args.rounds, "steps": args.steps,
              "edgesd_version": __version__, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "models": models, "command": " ".join(["python bench/first_image.py", *map(str, args.models),
                                                    "--resolution", str(args.resolution), "--rounds", str(args.rounds),
                                                    *(["--steps", str(args.steps)] if args.steps else []), "--out", str(args.out)])}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({name: round(m["openvino_vs_onnxruntime"], 2) for name, m in models.items()}))


if __name__ == "__main__":
    main()
