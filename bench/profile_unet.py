"""Where one UNet call spends its time, per operator type and the precision it ran in: the
evidence behind the precision table (which ops stayed fp32, which ran int8 or bf16).

    python bench/profile_unet.py models/sd15-int8 --backend openvino [--precision auto] [--latent 32] [--batch 2]

OpenVINO: the CPU plugin's per-node counters (PERF_COUNT), the precision read from each node's
kernel name (e.g. brgconv_avx512_core_I8 -> I8). onnxruntime: its built-in profiler; quantized
kernels show as their fused op types (QLinearConv, MatMulIntegerToFloat, ...), float ones as Conv,
MatMul, FusedConv. Random inputs at the model's shapes (the cost does not depend on the values).
"""

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PRECISION_IN_KERNEL = re.compile(r"_(I8|U8|BF16|FP16|F16|FP32|F32|I32)$", re.IGNORECASE)


def feeds(inputs: dict, batch: int, latent: int, rng) -> dict:
    """inputs: name -> (dtype, rank or static shape); returns random UNet feeds."""
    out = {}
    for name, (dtype, shape) in inputs.items():
        if name == "timestep":
            out[name] = np.array(500, dtype).reshape([1] * len(shape))
        elif name == "sample":
            out[name] = rng.standard_normal((batch, shape[1], latent, latent)).astype(dtype)
        elif len(shape) == 2:  # SDXL's text_embeds [batch, dim] and time_ids [batch, 6]
            out[name] = rng.standard_normal((batch, shape[1])).astype(dtype)
        elif len(shape) == 4:  # a ControlNet residual: the broadcast zero edgesd feeds without a ControlNet
            out[name] = np.zeros((1, 1, 1, 1), dtype)
        else:  # encoder_hidden_states: [batch, tokens, dim]
            out[name] = rng.standard_normal((batch, shape[1], shape[2])).astype(dtype)
    return out


def profile_openvino(folder: Path, precision: str, batch: int, latent: int, runs: int) -> list[tuple]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(folder / "unet" / "openvino_model.xml"))
    inputs = {p.get_any_name(): (np.dtype(p.get_element_type().to_dtype()), list(p.get_partial_shape().get_min_shape()))
              for p in model.inputs}
    x = feeds({n: (d, [s if s else 77 for s in shape] if n == "encoder_hidden_states" else shape)
               for n, (d, shape) in inputs.items()}, batch, latent, np.random.default_rng(0))
    model.reshape({n: list(v.shape) for n, v in x.items()})
    config = {"PERF_COUNT": True}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer(x)
    totals = collections.defaultdict(lambda: [0.0, 0])
    wall = []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(x)
        wall.append(time.perf_counter() - t0)
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            match = PRECISION_IN_KERNEL.search(info.exec_type)
            key = (info.node_type, match.group(1).upper() if match else "?")
            totals[key][0] += info.real_time.total_seconds() / runs
            totals[key][1] += 1
    return _rows(totals, runs), float(np.median(wall))


def profile_onnxruntime(folder: Path, batch: int, latent: int, runs: int) -> list[tuple]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "unet")
        session = ort.InferenceSession(str(folder / "unet" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
        inputs = {i.name: (np.dtype(types[i.type]), [s if isinstance(s, int) else 77 for s in i.shape])
                  for i in session.get_inputs()}
        x = feeds(inputs, batch, latent, np.random.default_rng(0))
        session.run(None, x)
        wall = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, x)
            wall.append(time.perf_counter() - t0)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals = collections.defaultdict(lambda: [0.0, 0])
    timed_runs = [e for e in events if e.get("name") == "model_run"][1:]  # the first is the warm-up
    start = timed_runs[0]["ts"] if timed_runs else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            key = (e["args"]["op_name"], "")
            totals[key][0] += e["dur"] / 1e6 / runs
            totals[key][1] += 1
    return _rows(totals, runs), float(np.median(wall))


def _rows(totals: dict, runs: int) -> list[tuple]:
    return sorted(((op, prec, t, n // runs) for (op, prec), (t, n) in totals.items()), key=lambda r: -r[2])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="edgesd model folder")
    parser.add_argument("--backend", choices=("openvino", "onnxruntime"), default="openvino")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="OpenVINO inference precision")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.backend == "openvino":
        rows, wall = profile_openvino(args.model, args.precision, args.batch, args.latent, args.runs)
    else:
        rows, wall = profile_onnxruntime(args.model, args.batch, args.latent, args.runs)
    busy = sum(r[2] for r in rows)
    by_precision = collections.defaultdict(float)
    for _, prec, t, _ in rows:
        by_precision[prec or "-"] += t
    print(f"# {args.model.name} UNet on {args.backend} ({args.precision}), batch {args.batch}, latent "
          f"{args.latent}x{args.latent}: {wall * 1e3:.0f} ms per call (median of {args.runs}), "
          f"{busy * 1e3:.0f} ms in operators")
    if args.backend == "openvino":
        print("# time by kernel precision: " + ", ".join(f"{p} {t / busy:.0%}" for p, t in
                                                      sorted(by_precision.items(), key=lambda kv: -kv[1])))
    print(f"{'op':<28}{'precision':>10}{'ms':>10}{'share':>8}{'count':>7}")
    for op, prec, t, n in rows[:args.top]:
        print(f"{op:<28}{prec or '-':>10}{t * 1e3:>10.1f}{t / busy:>8.1%}{n:>7}")
    rest = rows[args.top:]
    if rest:
        print(f"{'(other ' + str(len(rest)) + ' kinds)':<38}{sum(r[2] for r in rest) * 1e3:>10.1f}"
              f"{sum(r[2] for r in rest) / busy:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
