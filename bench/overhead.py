"""How much of an img2img call is edgesd's own work (numpy loop, pre/post-processing, copies)
rather than the engines' inference. Target (issue 4): at most 2% on the SD 1.5 architecture at 512x512.

    python bench/overhead.py MODEL_FOLDER [--resolution 512] [--steps 4] [--guidance 7.5] [--backend openvino] [--repeat 3]

Each session's `run` is wrapped with a timer; overhead = total - time inside the engines. The same
run gives the UNet call time to set against one scheduler step (issue 3: under 1%).
"""

import argparse
import json
import statistics
import sys
import time

from edgesd import Img2ImgPipeline
from edgesd.bench import bench_image


class TimedSession:
    def __init__(self, session, log: list):
        self._session, self._log = session, log
        self.input_types, self.backend, self.device = session.input_types, session.backend, session.device

    def run(self, feeds):
        t0 = time.perf_counter()
        out = self._session.run(feeds)
        self._log.append(time.perf_counter() - t0)
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pipe = Img2ImgPipeline.load(args.model, backend=args.backend, device="cpu", inference_precision=args.precision)
    logs = {name: [] for name in pipe.sessions}
    pipe.wrap_sessions(lambda name, session: TimedSession(session, logs[name]))
    image = bench_image(args.resolution)
    kwargs = dict(num_inference_steps=args.steps, strength=args.strength, guidance_scale=args.guidance, seed=0)
    pipe(image, "warm up", **kwargs)
    rows = []
    for _ in range(args.repeat):
        for log in logs.values():
            log.clear()
        result = pipe(image, "a benchmark prompt", **kwargs)
        engine = sum(sum(log) for log in logs.values())
        unet = statistics.median(logs["unet"])
        step = statistics.median(result.timings["steps"])
        rows.append({"total": result.timings["total"], "engine": engine, "overhead": result.timings["total"] - engine,
                     "unet_call": unet, "step_minus_unet": step - unet})
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    summary["overhead_share"] = summary["overhead"] / summary["total"]
    summary["loop_share_of_unet"] = summary["step_minus_unet"] / summary["unet_call"]
    print(json.dumps({"model": args.model, "backend": pipe.backend, **vars(args), **summary}, indent=2))
    print(f"overhead {summary['overhead_share']:.2%} of total; per step, edgesd's loop adds "
          f"{summary['loop_share_of_unet']:.2%} of a UNet call", file=sys.stderr)


if __name__ == "__main__":
    main()
