"""`--ray`'s cost on one machine (issue 24): a folder of inputs as the local batch writes it, against
the same folder on a Ray cluster with 1 and 2 workers, each a whole `edgesd img2img` command (process
start, model load, every image) as a user runs it, turns alternating so the machine's noise falls on
all alike. The cluster (`ray start --head`, started once, as a user's would be) is outside the timed
commands; its start is reported apart.

    python bench/ray_batch.py MODEL_FOLDER [--images 16] [--resolution 256] [--rounds 2] [--workers 1,2] [--steps N] \
        --out bench/results/ray-NAME-256.json

What a cluster of N such nodes would give follows from the same numbers: each node runs one worker at
the measured one-worker rate (its images' own time, from --json), so N nodes finish K images in the fixed
part (process start, cluster join, load) plus K / (N x rate).
"""

import argparse
import json
import os
import platform
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgesd import __version__
from edgesd.bench import bench_image

SCHEMA = "edgesd-bench-ray/1"
RAY = Path(sys.executable).with_name("ray")


def command(model: Path, inputs: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    """Seconds of one whole `edgesd img2img` over the folder, and its --json."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from edgesd.cli import main; main()", "img2img", str(model), "-i",
                           str(inputs), "-o", str(out), "-p", "a watercolor street", "--seed", "1", "--json", *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="edgesd-ray-bench-"))
    inputs = root / "in"
    inputs.mkdir()
    for k in range(args.images):
        bench_image(args.resolution).rotate(90 * (k % 4)).save(inputs / f"{k:03d}.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    t0 = time.perf_counter()
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True)
    cluster_start = time.perf_counter() - t0
    steps = ["--steps", str(args.steps)] if args.steps else []
    systems = {"local": steps} | {f"ray-{w}": [*steps, "--ray", f"127.0.0.1:{port}", "--ray-workers", str(w)] for w in workers}
    walls, image_seconds = {name: [] for name in systems}, {name: [] for name in systems}
    try:
        for round_ in range(args.rounds):
            for name, extra in systems.items():
                out = root / f"{name}-{round_}"
                seconds, result = command(args.model, inputs, out, extra)
                assert len(result["results"]) == args.images, result
                walls[name].append(seconds)
                image_seconds[name].append(sum(r["timings"]["total"] for r in result["results"]))
                print(f"round {round_}: {name} {seconds:.1f}s", file=sys.stderr)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
    rows = {}
    for name in systems:
        wall = statistics.median(walls[name])
        rows[name] = {"wall_seconds": walls[name], "images_per_second": args.images / wall,
                      "image_seconds": statistics.median(image_seconds[name])}
    local = rows["local"]["wall_seconds"]
    for name, row in rows.items():
        row["time_vs_local"] = statistics.median(row["wall_seconds"]) / statistics.median(local)
    one = rows[f"ray-{workers[0]}"]
    rate = args.images / one["image_seconds"] * workers[0]  # images/s of a node's own work (one worker per node)
    fixed = statistics.median(one["wall_seconds"]) - args.images / rate
    projection = {n: {"seconds_for_1000": fixed + 1000 / (n * rate), "images_per_second_steady": n * rate}
                  for n in (1, 2, 4, 8)}
    report = {"schema": SCHEMA, "model": args.model.name, "images": args.images, "resolution": args.resolution,
              "rounds": args.rounds, "cluster_start_seconds": cluster_start, "systems": rows,
              "cluster_projection": {"fixed_seconds": fixed, "node_images_per_second": rate, "nodes": projection},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "edgesd_version": __version__,
              "command": shlex.join(sys.argv)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name}: {row['images_per_second']:.2f} img/s, {row['time_vs_local']:.2f}x local's time")


if __name__ == "__main__":
    main()
