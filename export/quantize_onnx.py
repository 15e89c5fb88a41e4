"""One ONNX submodel -> fp16, int8-weights or int8 (static QDQ), with onnxruntime's own tools.

Every result keeps float32 inputs and outputs, so the runtime feeds it exactly as the fp32 export.

fp16 — onnxruntime.transformers' float16 converter (the one its Stable Diffusion optimizer uses),
with fp32 islands: the converter's DEFAULT_OP_BLOCK_LIST; the normalizations and Softmax, whose
sums and variances lose precision or overflow in fp16 (onnxruntime's SD CUDA engine builder names
force_fp32_ops=["SkipLayerNormalization", "LayerNormalization"] for this; its own SD recipe blocks
nothing because it first fuses attention and GroupNorm into contrib ops that accumulate in fp32,
which this unfused graph does not have); and the UNet's timestep embedding (t * frequency reaches
1000, where fp16 steps by 0.5, so sin/cos of it would be noise). The price of the Softmax island
is a cast each way around the attention probabilities, the largest tensors at 512x512; drop it
from _FP32_ISLAND_OPS if GPU benchmarks show fidelity holds without. Resize keeps its scales fp32
through the converter's ALWAYS_FLOAT_INPUTS; nearest upsampling itself is exact in fp16.
fp16 is for GPUs (CUDA, DirectML): onnxruntime's CPU provider runs most fp16 ops through casts.

int8-weights — weight-only: each Conv/ConvTranspose/MatMul/Gemm weight and each Gather table
(token embeddings) is stored as int8, symmetric per output channel (row, for tables), by
onnxruntime.quantization's own scheme, and fed through a DequantizeLinear to the unchanged fp32
operator. Chosen over `quantize_dynamic` because (1) it is the same transform as OpenVINO's
nncf.compress_weights, so both formats mean the same thing: only weight rounding error, fp32
activations; dynamic quantization also rounds every activation to uint8 at run time; (2)
DequantizeLinear runs on every execution provider, while ConvInteger/DynamicQuantizeLinear are
CPU-only; (3) dynamic quantization has no integer Gemm, and ConvInteger is slower than fp32 Conv
on CPU. What it buys is disk and download size, not speed (see `int8` for that).

int8 — onnxruntime.quantization.quantize_static in QDQ format, calibrated (MinMax) on the inputs
the fp32 pipeline fed this submodel: weights int8 per channel, activations uint8 (U8S8, the fast
combination on x86 CPUs with VNNI; on CPUs without VNNI U8S8 can saturate, see onnxruntime's
quantization docs). Conv, MatMul and Gemm are quantized, except: the attention MatMuls whose
both operands are activations (Q·Kᵀ and softmax·V; softmax probabilities at 1/255 resolution
visibly hurt diffusion models, and those ops carry no weights to shrink), and the few Convs whose
input mixes ranges (conv_in on the latents; the 1x1 shortcut Convs on the up blocks' skip
Concats); see quantize_openvino's docstring for why and what it measured.

Models over 2 GB (SD fp32 UNet: 3.4 GB) are read with their external data and written with
external data (`model.onnx_data`) whenever the result would exceed protobuf's 2 GB limit.
"""

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXTERNAL_DATA = "model.onnx_data"  # the name optimum gives external data, and the manifest lists
_PROTOBUF_LIMIT = 2**31 - 2**24  # leave room for the graph itself
_FP32_ISLAND_OPS = ["LayerNormalization", "SkipLayerNormalization", "InstanceNormalization", "GroupNormalization",
                    "GroupNorm", "SkipGroupNorm", "Softmax"]
# op type -> (weight input index, per-channel axis); MatMul and Gemm axes are resolved per node.
_WEIGHT_INPUT = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, 1), "Gemm": (1, None), "Gather": (0, 0)}
_MIN_WEIGHT_ELEMENTS = 1024  # smaller tensors are not worth a scale vector and a node
STATIC_OP_TYPES = ["Conv", "MatMul", "Gemm"]


def to_fp16(src: Path, dst: Path) -> str:
    """fp16 weights and compute, fp32 islands (see the module docstring); float32 inputs/outputs kept."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    _name_unnamed_nodes(model)
    islands = _timestep_embedding_nodes(model)
    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(
        use_symbolic_shape_infer=True,  # onnx's own shape inference stops at 2 GB
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *_FP32_ISLAND_OPS],
        node_block_list=islands,
    )
    save(wrapped.model, dst)
    kept = ", ".join(sorted({n.op_type for n in wrapped.model.graph.node} & set(_FP32_ISLAND_OPS)))
    note = f"; fp32 islands: {kept or 'none'}" + (", timestep embedding" if islands else "")
    return f"onnxruntime.transformers float16 converter (keep_io_types){note}"


def to_int8_weights(src: Path, dst: Path) -> str:
    """Weight-only int8 (see the module docstring): int8 initializers behind DequantizeLinear."""
    model = onnx.load(str(src))
    count = _weight_only(model)
    save(model, dst)
    return f"weight-only int8 (per-channel symmetric, DequantizeLinear) on {count} weights, onnxruntime.quantization's symmetric scheme"


def _weight_only(model: onnx.ModelProto) -> int:
    """Replace every float weight of a Conv/ConvTranspose/MatMul/Gemm/Gather by int8 + DequantizeLinear,
    in place; returns how many. Weights already behind a DequantizeLinear are not float initializers
    feeding those ops, so they are left alone."""
    if _opset(model) < 13:
        raise RuntimeError(f"opset {_opset(model)} has no per-channel DequantizeLinear (needs 13+)")
    weights = _weights_to_quantize(model)
    initializers = {t.name: t for t in model.graph.initializer}
    dequantize_nodes = []
    for name, axis in weights.items():
        q_weight, scale, zero_point = _quantize_per_channel(initializers[name], axis)
        model.graph.initializer.remove(initializers[name])
        model.graph.initializer.extend([q_weight, scale, zero_point])
        dequantize_nodes.append(helper.make_node(
            "DequantizeLinear", [q_weight.name, scale.name, zero_point.name], [name], name=f"{name}_DequantizeLinear", axis=axis,
        ))
    # The dequantized tensor takes the weight's name, so its consumers need no rewiring.
    nodes = [*dequantize_nodes, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(weights)


def to_int8_static(src: Path, dst: Path, calibration: list[dict], quantize_attention_matmuls: bool = False) -> str:
    """Static QDQ int8 calibrated on `calibration` (a list of feed dicts; see the module docstring)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static int8 quantization needs calibration samples")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._samples = iter(calibration)

        def get_next(self):
            return next(self._samples, None)

    model = onnx.load(str(src), load_external_data=False)
    excluded = _range_sensitive_convolutions(model) + ([] if quantize_attention_matmuls else _activation_matmuls(model))
    large = _external_bytes(src) > _PROTOBUF_LIMIT
    with tempfile.TemporaryDirectory(prefix="edgesd-qdq-", dir=dst.parent) as scratch, _no_preprocess_advice():
        out = Path(scratch) / "model.onnx"
        quantize_static(
            str(src), str(out), Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=STATIC_OP_TYPES,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=large,
        )
        quantized = onnx.load(str(out))
    _weight_only(quantized)  # the weights of the excluded ops: int8 too, their activations stay fp32
    save(quantized, dst)
    return (f"onnxruntime.quantization static QDQ (U8S8, per-channel weights, MinMax), "
            f"{len(calibration)} calibration samples; float activations: {_describe(model, excluded)} "
            "(their weights int8, weight-only)")


def save(model: onnx.ModelProto, dst: Path) -> None:
    """Write `model` to dst (model.onnx), with all weights in EXTERNAL_DATA beside it when over 2 GB.
    Files of an earlier model at dst are replaced."""
    dst = Path(dst)
    for stale in (dst, dst.with_name(EXTERNAL_DATA)):
        stale.unlink(missing_ok=True)
    large = sum(t.ByteSize() for t in model.graph.initializer) > _PROTOBUF_LIMIT
    onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA, size_threshold=1024)


def replace_model(folder: Path, convert, *args) -> str:
    """Run `convert(src, dst, *args)` from folder/model.onnx into a scratch folder, then move the result
    (model.onnx and, if any, model.onnx_data) over the original files; returns convert's description."""
    with tempfile.TemporaryDirectory(prefix="edgesd-quantize-", dir=folder) as scratch:
        dst = Path(scratch) / "model.onnx"
        method = convert(folder / "model.onnx", dst, *args)
        for stale in ("model.onnx", EXTERNAL_DATA):
            (folder / stale).unlink(missing_ok=True)
        for produced in Path(scratch).iterdir():
            shutil.move(str(produced), folder / produced.name)
    return method


def _weights_to_quantize(model: onnx.ModelProto) -> dict[str, int]:
    """Float initializers that are the weight operand of a Conv/MatMul/Gemm/Gather -> per-channel axis.
    A weight shared by consumers that disagree on the axis is left as it is."""
    initializers = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    axes: dict[str, set] = {}
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_INPUT:
            continue
        index, axis = _WEIGHT_INPUT[node.op_type]
        if len(node.input) <= index or node.input[index] not in initializers or node.input[index] in graph_inputs:
            continue
        tensor = initializers[node.input[index]]
        if tensor.data_type != TensorProto.FLOAT or int(np.prod(tensor.dims)) < _MIN_WEIGHT_ELEMENTS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("MatMul", "Gather") and len(tensor.dims) != 2:
            continue
        if node.op_type == "Gather" and attrs.get("axis", 0) != 0:
            continue
        if node.op_type == "Gemm":
            axis = 0 if attrs.get("transB", 0) else 1
        axes.setdefault(tensor.name, set()).add(axis)
    return {name: next(iter(found)) for name, found in axes.items() if len(found) == 1}


def _quantize_per_channel(weight: onnx.TensorProto, axis: int):
    """Symmetric int8 per channel along `axis`: onnxruntime.quantization's scheme (compute_scale_zp with
    symmetric=True: scale = 2 * max|w| / 254, zero point 0, scale 1 for an all-zero channel; values
    rounded half to even), vectorised: its per-channel helpers loop in Python, minutes on a 49408-row
    embedding table. tests/test_quantize.py checks this against quantize_onnx_initializer."""
    data = numpy_helper.to_array(weight).astype(np.float32)
    reduce = tuple(i for i in range(data.ndim) if i != axis)
    absmax = np.abs(data).max(axis=reduce).astype(np.float64)
    scale = (2 * absmax / 254).astype(np.float32)
    scale[scale < np.finfo(np.float32).tiny] = 1.0
    shape = [1] * data.ndim
    shape[axis] = -1
    q = np.clip(np.round(data / scale.reshape(shape)), -128, 127).astype(np.int8)
    zero_point = np.zeros(scale.shape, np.int8)
    return (numpy_helper.from_array(q, f"{weight.name}_quantized"), numpy_helper.from_array(scale, f"{weight.name}_scale"),
            numpy_helper.from_array(zero_point, f"{weight.name}_zero_point"))


def _range_sensitive_convolutions(model: onnx.ModelProto) -> list[str]:
    """Convs whose input mixes ranges that one per-tensor activation scale cannot serve (see
    quantize_openvino.range_sensitive_convolutions): reading a graph input, or a Concat."""
    inputs = {i.name for i in model.graph.input}
    concats = {out for n in model.graph.node if n.op_type == "Concat" for out in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and (n.input[0] in inputs or n.input[0] in concats)]


def _describe(model: onnx.ModelProto, names: list[str]) -> str:
    kinds = {}
    by_name = {n.name: n.op_type for n in model.graph.node}
    for name in names:
        kinds[by_name[name]] = kinds.get(by_name[name], 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in kinds.items()) or "nothing"


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no constant operand: attention scores (Q·Kᵀ) and probabilities·V."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def _timestep_embedding_nodes(model: onnx.ModelProto) -> list[str]:
    """Every node upstream of a Sin/Cos (the sinusoidal timestep embedding: timestep -> t * freqs)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    pending = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    found = {}
    while pending:
        node = pending.pop()
        if node.name not in found:
            found[node.name] = node
            pending += [producer[i] for i in node.input if i in producer]
    return list(found)


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """The fp16 converter blocks nodes by name; give the (rare) unnamed ones a unique name."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"edgesd_node_{i}"


class _no_preprocess_advice(logging.Filter):
    """onnxruntime.quantization logs 'Please consider pre-processing...' to the root logger on every call.
    Its quant_pre_process is not run: optimum's export is already constant-folded and typed, and
    quantize_static finds every Conv/MatMul/Gemm without it (it also adds a full model rewrite,
    with onnx shape inference that stops at 2 GB). It also logs 'failed to infer the type of tensor'
    for each output of the fused attention (a com.microsoft operator onnx's shape inference does not
    type): those stay float, which the fidelity check after quantizing measures."""

    def filter(self, record):
        message = record.getMessage()
        return "pre-processing" not in message and "failed to infer the type of tensor" not in message

    def __enter__(self):
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _external_bytes(src: Path) -> int:
    data = src.with_name(EXTERNAL_DATA)
    return src.stat().st_size + (data.stat().st_size if data.exists() else 0)
