"""The physical limit: the UNet's floating-point work per call, and this CPU's peak fp32 rate.

    python bench/flops.py models/sd15/unet/model.onnx --batch 2 --latent 64x64 [--unet-time 1.23] [--json out.json]

Counts multiply-accumulates of the compute-bound operators (Conv, ConvTranspose, MatMul, Gemm and
their integer/quantized forms) from the exported graph once its inputs are given fixed shapes, at
2 flops per MAC; everything else (normalisations, activations, softmax, elementwise) is memory-bound
and a few percent of the arithmetic, so it is left out and the count is a slight lower bound.

- ONNX (`.onnx`): the graph is read without its weights (external data is never loaded, so
  models over 2 GB cost nothing), input shapes are fixed and shape inference gives every
  operand's shape: onnxruntime's symbolic shape inference (onnx's per-node inference plus the
  constant and Shape->Reshape propagation the attention blocks need; plain `onnx.shape_inference`
  with data propagation leaves the timestep-embedding and attention reshapes unresolved).
- OpenVINO IR (`.xml`): the model is reshaped to the same static shapes and OpenVINO's own shape
  propagation is used: an independent count of the same network (the test suite checks they agree).

`batch` is what the UNet sees: 2 under classifier-free guidance (unconditional + conditional),
1 without. `latent` is the image size divided by the VAE factor (8 for SD: 512 px -> 64x64).

Peak fp32 rate = physical cores x clock x SIMD lanes x FMA units (2) x 2 flops per FMA. The lanes
are the width the FMA units really have: AVX-512 on AMD Zen 4 runs on 256-bit units (two passes),
so it counts as 8 lanes there, not 16 (`peak_gflops_nominal` is the flags-only figure). Under a
hypervisor the clock is the nominal (TSC) one; boost clocks are higher, so the true peak may be
somewhat above this. A measured single-precision GEMM rate (numpy's BLAS on a 2048^3 product) is
given as the practically reachable ceiling.
"""

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

# op type -> index of the weight (second) operand; the first operand is the activation.
# MultiHeadAttention (edgesd's fused ONNX UNets): query first, then the key.
ONNX_OPS = {
    "Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1,
    "ConvInteger": 1, "MatMulInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3, "MultiHeadAttention": 1,
}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"}


# ---------------------------------------------------------------------------------------------
# ONNX


def _input_shapes(inputs: dict[str, list], batch: int, latent: tuple[int, int], sequence: int) -> dict[str, list[int]]:
    """Concrete shapes for the UNet's inputs: `inputs` maps name -> dims (int or symbolic/None)."""
    h, w = latent
    shapes = {}
    for name, dims in inputs.items():
        fixed = []
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                fixed.append(d)
            elif name == "sample":
                fixed.append({0: batch, 2: h, 3: w}.get(i, 4))
            elif name == "encoder_hidden_states":
                fixed.append({0: batch, 1: sequence}[i] if i in (0, 1) else _fail(name, dims))
            elif name == "timestep":
                fixed.append(1)  # a scalar or a [1]/[batch] vector: the time embedding is expanded to the batch inside
            elif "_residual" in name:
                fixed.append(1)  # ControlNet residuals: the (1, 1, 1, 1) zero fed without a ControlNet, broadcast
            elif i == 0:
                fixed.append(batch)
            else:
                _fail(name, dims)
        shapes[name] = fixed
    return shapes


def _fail(name, dims):
    raise ValueError(f"cannot fix the shape of input {name!r} {dims}: not a UNet input this script knows")


def load_onnx_graph(path: Path, small: int = 4096):
    """The model proto without its weights: external tensors stay on disk (only their shapes are
    needed), except small ones (<= `small` elements: shape and index constants, which shape
    inference must read), loaded in case the exporter put every tensor outside."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    for tensor in _get_all_tensors(model):  # initializers and Constant nodes' tensors alike
        if uses_external_data(tensor) and math.prod(tensor.dims) <= small:
            load_external_data_for_tensor(tensor, str(path.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def count_onnx(path: Path, batch: int, latent: tuple[int, int], sequence: int = 77) -> dict:
    import onnx
    from onnx import shape_inference

    model = load_onnx_graph(path)
    graph = model.graph
    initializers = {t.name: list(t.dims) for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializers]
    dims_of = {i.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in i.type.tensor_type.shape.dim] for i in real_inputs}
    shapes = _input_shapes(dims_of, batch, latent, sequence)
    for inp in real_inputs:
        dims = inp.type.tensor_type.shape.dim
        for d, v in zip(dims, shapes[inp.name]):
            d.Clear()
            d.dim_value = v
    for out in graph.output:  # symbolic output dims would otherwise be merged back in
        out.type.tensor_type.ClearField("shape")
    del graph.value_info[:]
    # Shape inference may read external tensors by their relative location: run it beside the model.
    with contextlib.chdir(path.parent):
        try:  # onnxruntime's symbolic shape inference: onnx's per-node inference plus constant/shape propagation
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            inferred, method = SymbolicShapeInference.infer_shapes(model, auto_merge=True), "onnxruntime symbolic_shape_infer"
        except ImportError:  # (it needs sympy)
            inferred, method = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), "onnx infer_shapes"

    known = dict(initializers)
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            known[vi.name] = [d.dim_value for d in t.shape.dim]
    for node in inferred.graph.node:  # Constant nodes carry their shape in the attribute
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    known[node.output[0]] = list(a.t.dims)

    macs = Counter()
    nodes = Counter()
    unresolved = []
    for node in inferred.graph.node:
        if node.op_type not in ONNX_OPS:
            continue
        a_name, w_name, y_name = node.input[0], node.input[ONNX_OPS[node.op_type]], node.output[0]
        a, w, y = known.get(a_name), known.get(w_name), known.get(y_name)
        attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        n = _macs(node.op_type, a, w, y, attrs)
        if n is None:
            unresolved.append(f"{node.op_type} {node.name or y_name}: shapes {a}, {w} -> {y}")
            continue
        macs[node.op_type] += n
        nodes[node.op_type] += 1
    other_ops = Counter(n.op_type for n in inferred.graph.node if n.op_type not in ONNX_OPS)
    return _result(path, "onnx", batch, latent, sequence, shapes, macs, nodes, unresolved, other_ops, method)


def _macs(op: str, a, w, y, attrs: dict) -> int | None:
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        if w is None or y is None:
            return None
        return math.prod(y) * math.prod(w[1:])  # W: [Cout, Cin/group, k...]
    if op == "ConvTranspose":
        if w is None or a is None:
            return None
        return math.prod(a) * math.prod(w[1:])  # W: [Cin, Cout/group, k...]; each input pixel scatters
    if op == "Gemm":
        if a is None or y is None:
            return None
        k = a[0] if attrs.get("transA", 0) else a[1]
        return math.prod(y) * k
    if op == "MultiHeadAttention":  # query (B, S, D), key (B, L, D) -> (B, S, Dv): Q x K^T, then x V
        if a is None or w is None or y is None:
            return None
        return math.prod(a) * w[1] + math.prod(y) * w[1]
    # MatMul family (numpy semantics): every output element is a K-long dot product
    if a is None or y is None:
        return None
    return math.prod(y) * a[-1]


# ---------------------------------------------------------------------------------------------
# OpenVINO IR


def count_openvino(path: Path, batch: int, latent: tuple[int, int], sequence: int = 77) -> dict:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    dims_of = {}
    for p in model.inputs:
        ps = p.get_partial_shape()
        dims_of[p.get_any_name()] = [d.get_length() if d.is_static else None for d in ps]
    shapes = _input_shapes(dims_of, batch, latent, sequence)
    model.reshape({name: ov.PartialShape(s) for name, s in shapes.items()})
    macs, nodes, unresolved, other_ops = Counter(), Counter(), [], Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        try:
            n = _ov_macs(kind, op)
        except (RuntimeError, ValueError) as e:  # a dynamic dimension left
            unresolved.append(f"{kind} {op.get_friendly_name()}: {e}")
            continue
        if n is None:
            other_ops[kind] += 1
        else:
            macs[kind] += n
            nodes[kind] += 1
    return _result(path, "openvino", batch, latent, sequence, shapes, macs, nodes, unresolved, other_ops,
                   "openvino reshape")


def _ov_macs(kind: str, op) -> int | None:
    def shape(i):
        return [int(d) for d in op.input_value(i).get_partial_shape().to_shape()]

    def out():
        return [int(d) for d in op.get_output_partial_shape(0).to_shape()]

    if kind == "Convolution":  # W: [Cout, Cin, k...]
        return math.prod(out()) * math.prod(shape(1)[1:])
    if kind == "GroupConvolution":  # W: [G, Cout/G, Cin/G, k...]
        return math.prod(out()) * math.prod(shape(1)[2:])
    if kind == "ConvolutionBackpropData":  # W: [Cin, Cout, k...]
        return math.prod(shape(0)) * math.prod(shape(1)[1:])
    if kind == "GroupConvolutionBackpropData":  # W: [G, Cin/G, Cout/G, k...]
        return math.prod(shape(0)) * math.prod(shape(1)[2:])
    if kind == "MatMul":
        a = shape(0)
        transpose_a = op.get_attributes().get("transpose_a", False)
        k = a[-2] if (transpose_a and len(a) > 1) else a[-1]
        return math.prod(out()) * k
    if kind == "ScaledDotProductAttention":  # Q [.., L, E], K [.., S, E], V [.., S, Ev]
        q, kk, v = shape(0), shape(1), shape(2)
        return math.prod(q[:-1]) * kk[-2] * (q[-1] + v[-1])
    return None


# ---------------------------------------------------------------------------------------------


def _result(path, fmt, batch, latent, sequence, shapes, macs, nodes, unresolved, other_ops, method) -> dict:
    total = sum(macs.values())
    integer = sum(v for k, v in macs.items() if k in INTEGER_OPS)
    return {
        "model": str(path),
        "format": fmt,
        "shape_inference": method,
        "batch": batch,
        "latent": list(latent),
        "sequence": sequence,
        "input_shapes": shapes,
        "macs": total,
        "flops": 2 * total,
        "gflop": 2 * total / 1e9,
        "integer_flops": 2 * integer,
        "by_op": {k: {"nodes": nodes[k], "gflop": 2 * v / 1e9} for k, v in sorted(macs.items())},
        "unresolved": unresolved,
        "not_counted_ops": dict(other_ops.most_common()),
    }


def count(path: str | Path, batch: int = 2, latent=(64, 64), sequence: int = 77) -> dict:
    """FLOPs of one UNet call; `path` is a .onnx, an openvino .xml or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.onnx", "openvino_model.xml"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path} has neither model.onnx nor openvino_model.xml")
    if path.suffix == ".xml":
        return count_openvino(path, batch, tuple(latent), sequence)
    return count_onnx(path, batch, tuple(latent), sequence)


# ---------------------------------------------------------------------------------------------
# The CPU


def _cpuinfo() -> dict:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                info.setdefault(k, v)  # first processor's values
    except OSError:
        pass
    return info


def cpu_peak(clock_ghz: float | None = None, fma_units: int = 2, lanes: int | None = None) -> dict:
    """Peak fp32 FLOP/s of the cores this process may use, and how the figure was derived."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        threads_per_core = max(1, int(info["siblings"]) // int(info["cpu cores"]))
    except (KeyError, ValueError, ZeroDivisionError):
        threads_per_core = 1
    cores = max(1, logical // threads_per_core)

    clock_source = "--clock-ghz"
    if clock_ghz is None:
        max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        if max_freq.is_file():
            clock_ghz, clock_source = int(max_freq.read_text()) / 1e6, "cpufreq cpuinfo_max_freq (max boost)"
        elif "cpu MHz" in info:
            clock_ghz = float(info["cpu MHz"]) / 1e3
            clock_source = "/proc/cpuinfo cpu MHz" + (" (hypervisor: nominal TSC clock)" if "hypervisor" in flags else "")
        else:
            clock_ghz, clock_source = float("nan"), "unknown"

    if "avx512f" in flags:
        isa, nominal_lanes = "avx512f", 16
    elif "avx2" in flags or "fma" in flags:
        isa, nominal_lanes = "avx2+fma", 8
    elif "sse2" in flags:
        isa, nominal_lanes = "sse2", 4
    else:
        isa, nominal_lanes = "unknown", 4
    note = ""
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    effective = nominal_lanes
    if lanes is not None:
        effective, note = lanes, "lanes given on the command line"
    elif isa == "avx512f" and vendor == "AuthenticAMD" and family == 0x19:
        effective = 8
        note = "AMD Zen 4 executes AVX-512 on 256-bit FMA units (two passes): 8 fp32 lanes per FMA unit"
    per_cycle = effective * fma_units * 2
    return {
        "cpu_model": info.get("model name", "unknown"),
        "vendor": vendor,
        "cpu_family": family,
        "model_number": info.get("model", ""),
        "logical_cpus": logical,
        "physical_cores": cores,
        "clock_ghz": clock_ghz,
        "clock_source": clock_source,
        "isa": isa,
        "fp32_lanes": effective,
        "fma_units": fma_units,
        "flops_per_cycle_per_core": per_cycle,
        "peak_gflops": cores * clock_ghz * per_cycle,
        "peak_gflops_nominal": cores * clock_ghz * nominal_lanes * fma_units * 2,
        "note": note,
    }


def measure_sgemm(n: int = 2048, repeat: int = 5) -> dict:
    """Best fp32 GEMM rate of numpy's BLAS with all cores: what a well-tuned kernel reaches here."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": best, "gflops": 2 * n**3 / best / 1e9}


def parse_latent(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"latent size must look like 64x64, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the UNet: model.onnx, openvino_model.xml, or the folder holding one")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch: 2 under classifier-free guidance (default)")
    parser.add_argument("--latent", type=parse_latent, default=(64, 64), help="latent HxW (image / 8 for SD), default 64x64")
    parser.add_argument("--sequence", type=int, default=77, help="text tokens (77 for CLIP)")
    parser.add_argument("--unet-time", type=float, help="measured seconds per UNet call: report achieved GFLOP/s")
    parser.add_argument("--clock-ghz", type=float, help="override the clock used for the peak")
    parser.add_argument("--fma-units", type=int, default=2, help="FMA units per core (2 on most x86 cores)")
    parser.add_argument("--lanes", type=int, help="override fp32 lanes per FMA unit")
    parser.add_argument("--no-sgemm", action="store_true", help="skip the measured numpy GEMM ceiling")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    result = count(args.model, args.batch, args.latent, args.sequence)
    result["cpu"] = cpu_peak(args.clock_ghz, args.fma_units, args.lanes)
    if not args.no_sgemm:
        result["sgemm"] = measure_sgemm()
    if args.unet_time:
        achieved = result["gflop"] / args.unet_time
        result["achieved"] = {"unet_time_s": args.unet_time, "gflops": achieved,
                              "share_of_peak": achieved / result["cpu"]["peak_gflops"]}
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    cpu = result["cpu"]
    by_op = ", ".join(f"{k} {v['gflop']:.1f}" for k, v in result["by_op"].items())
    print(f"UNet call at batch {args.batch}, latent {args.latent[0]}x{args.latent[1]}: {result['gflop']:.1f} GFLOP "
          f"({by_op}); CPU peak {cpu['peak_gflops']:.0f} GFLOP/s fp32 ({cpu['physical_cores']} cores x {cpu['clock_ghz']:.2f} GHz x "
          f"{cpu['flops_per_cycle_per_core']} flops/cycle)" +
          (f"; numpy sgemm {result['sgemm']['gflops']:.0f} GFLOP/s" if "sgemm" in result else ""), file=sys.stderr)
    if result["unresolved"]:
        print(f"warning: {len(result['unresolved'])} compute nodes had unknown shapes and were not counted",
              file=sys.stderr)
    if "achieved" in result:
        a = result["achieved"]
        print(f"achieved {a['gflops']:.0f} GFLOP/s = {a['share_of_peak']:.1%} of peak", file=sys.stderr)


if __name__ == "__main__":
    main()
