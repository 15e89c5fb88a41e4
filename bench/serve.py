"""`edgesd serve`'s cost (issue 23): the same img2img call through the Python API and through the server's
two APIs (edgesd's /edgesd/v1/generate, A1111's /sdapi/v1/img2img), turns alternating in one process so
the machine's noise falls on all alike; then 1, 2 and 4 concurrent clients (one job at a time, the rest
queued: latency grows, none is lost). Target: server overhead <= 5%.

    python bench/serve.py MODEL_FOLDER [--resolution 512] [--steps 2] [--strength 0.5] [--guidance 0] \
        [--backend auto] [--rounds 5] [--clients 1,2,4] [--requests 2] --out bench/results/serve-NAME-512.json

The server runs in this process on 127.0.0.1 (a thread, as `edgesd serve` runs uvicorn beside the worker);
the client is `requests`, sending a PNG and reading the PNG answers back, as any client does.
"""

import argparse
import base64
import io
import json
import platform
import shlex
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
import uvicorn
from PIL import Image

from edgesd import Img2ImgPipeline, __version__
from edgesd.bench import bench_image
from edgesd.serve.app import create_app
from edgesd.serve.served import Served

SCHEMA = "edgesd-bench-serve/1"


def start(served: Served) -> tuple[uvicorn.Server, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            return server, port
        time.sleep(0.05)
    raise RuntimeError("the server did not start")


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def checked(answer: requests.Response) -> dict:
    if not answer.ok:
        raise RuntimeError(f"{answer.status_code}: {answer.text}")
    return answer.json()


def pixels(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--requests", type=int, default=2, help="requests per client in the concurrency runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    pipe = Img2ImgPipeline.load(args.model, backend=args.backend, device="cpu")
    name = pipe.folder.name
    server, port = start(Served({name: pipe}, queue_size=16))
    image = bench_image(args.resolution)
    prompt = "a benchmark prompt"
    native = {"image": png_b64(image), "prompt": prompt, "num_inference_steps": args.steps, "strength": args.strength,
              "guidance_scale": args.guidance, "width": args.resolution, "height": args.resolution}
    a1111 = {"init_images": [native["image"]], "prompt": prompt, "steps": args.steps, "denoising_strength": args.strength,
             "cfg_scale": args.guidance, "width": args.resolution, "height": args.resolution, "sampler_name": None,
             "inpainting_fill": 1}

    def direct(seed):
        return np.asarray(pipe(image, prompt, num_inference_steps=args.steps, strength=args.strength,
                               guidance_scale=args.guidance, seed=seed).images[0])

    def edgesd_api(seed):
        answer = requests.post(f"http://127.0.0.1:{port}/edgesd/v1/generate", json={**native, "seed": seed}, timeout=3600)
        return pixels(checked(answer)["images"][0]["image"])

    def a1111_api(seed):
        answer = requests.post(f"http://127.0.0.1:{port}/sdapi/v1/img2img", json={**a1111, "seed": seed}, timeout=3600)
        return pixels(checked(answer)["images"][0])

    ways = {"python": direct, "edgesd_api": edgesd_api, "a1111_api": a1111_api}
    same = {way: bool(np.array_equal(call(0), direct(0))) for way, call in ways.items() if way != "python"}  # + warm-up
    times = {way: [] for way in ways}
    for r in range(args.rounds):
        for way, call in (ways.items() if r % 2 == 0 else reversed(ways.items())):
            t0 = time.perf_counter()
            call(r + 1)
            times[way].append(time.perf_counter() - t0)
    medians = {way: statistics.median(t) for way, t in times.items()}
    overhead = {way: medians[way] / medians["python"] - 1 for way in ways if way != "python"}
    print(f"{name} {args.resolution}px: python {medians['python']:.3f} s; " +
          ", ".join(f"{way} {medians[way]:.3f} s ({overhead[way]:+.1%})" for way in overhead), file=sys.stderr)

    concurrency = []
    for clients in map(int, args.clients.split(",")):
        latencies, failures = [], []

        def client(k):
            for i in range(args.requests):
                t0 = time.perf_counter()
                try:
                    edgesd_api(1000 * k + i)
                    latencies.append(time.perf_counter() - t0)
                except (requests.RequestException, RuntimeError) as e:
                    failures.append(str(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - t0
        row = {"clients": clients, "requests": clients * args.requests, "failed": len(failures), "wall_s": wall,
               "images_per_s": len(latencies) / wall, "latency_median_s": statistics.median(latencies),
               "latency_max_s": max(latencies)}
        concurrency.append(row)
        print(f"  {clients} client(s): {row['images_per_s']:.2f} images/s, latency median {row['latency_median_s']:.2f} s, "
              f"max {row['latency_max_s']:.2f} s, {len(failures)} failed", file=sys.stderr)
    server.should_exit = True

    result = {"schema": SCHEMA, "model": name, "backend": pipe.provenance["backend"], "resolution": args.resolution,
              "steps": args.steps, "strength": args.strength, "guidance": args.guidance, "rounds": args.rounds,
              "call_s": medians, "times_s": times, "overhead": overhead, "same_pixels": same, "concurrency": concurrency,
              "edgesd_version": __version__, "machine": {"cpu": platform.processor() or platform.machine(),
                                                          "python": platform.python_version()},
              "command": shlex.join(["python", *sys.argv])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
