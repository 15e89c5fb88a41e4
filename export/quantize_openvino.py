"""One OpenVINO IR submodel -> fp16, int8-weights or int8 (hybrid), with OpenVINO and NNCF.

fp16 — the IR saved with `compress_to_fp16=True`: fp16 weights, decompressed on load; the plugin
then computes in whatever `inference_precision` asks for (bf16 on AMX/AVX512-BF16 CPUs, fp16 on
GPUs, f32 exactly). Inputs and outputs stay f32.

int8-weights — `nncf.compress_weights` in its default INT8_ASYM mode: every MatMul, Convolution and
embedding (Gather) weight stored as uint8 per output channel with an f16 scale and zero point,
decompressed by the engine; activations stay in floating point. Saves disk, not time; and on
OpenVINO's CPU plugin not memory either: it has compressed-weight kernels for linear layers only,
so it decompresses the Convolutions' weights at compile into heap copies (SD 1.5 UNet at 256x256:
3.7 GB held after compile against 1.9 GB from the fp32 IR, 14 s against 5 s; compressing only the
linear layers holds 1.6 GB but leaves the UNet at 0.75x its fp32 size on disk). bench/README.md.

int8 (UNet) — hybrid quantization as optimum-intel 1.27 does it for diffusion models
(`_get_hybrid_mixed_quantization_config` + `_mixed_quantization` in
optimum/intel/openvino/quantization.py), without needing optimum-intel's pipeline classes:
  1. nncf.compress_weights (INT8_ASYM) on the MatMul and embedding weights, Convolutions ignored;
  2. nncf.quantize on the result with the calibration dataset, ignoring the ops whose weights
     step 1 compressed: Convolutions (weights and activations) and every activation-by-activation
     op get FakeQuantize; model_type TRANSFORMER, preset MIXED (asymmetric activations), fast bias
     correction, SmoothQuant off (alpha -1), overflow fix off.
One deliberate difference, the same in the ONNX int8: step 2 also leaves out the Convolutions
whose input mixes ranges that one per-tensor activation scale cannot serve: conv_in, reading the
latents (from pure noise to a clean image's latents, over 4 channels), and the 1x1 shortcut
Convolutions reading the up blocks' skip-connection Concats (shallow and deep features side by
side: the "shortcut splitting" problem of Q-Diffusion, Li et al. 2023). Their weights are still
compressed in step 1. On the tiny test UNet this took the noise prediction's cosine similarity at
the lowest timesteps from 0.87 to 0.998; on SD 1.5 these Convolutions hold under 3% of the weights.
"""

import logging
from collections import deque
from pathlib import Path


def to_fp16(src: Path, dst: Path) -> str:
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(src)), str(dst), compress_to_fp16=True)
    return "openvino save_model(compress_to_fp16=True)"


def to_int8_weights(src: Path, dst: Path) -> str:
    import nncf
    import openvino as ov

    with _quiet_nncf():
        model = nncf.compress_weights(ov.Core().read_model(str(src)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return f"nncf {nncf.__version__} compress_weights INT8_ASYM (per-channel)"


def to_int8_hybrid(src: Path, dst: Path, calibration: list[dict], linear_int8: bool = False) -> str:
    """Hybrid quantization (see the module docstring); `calibration` is a list of feed dicts.

    `linear_int8` quantizes the linear layers like the Convolutions (weights and activations)
    instead of weight-only: not optimum-intel's choice; bench/precision.py build --linear-int8."""
    import nncf
    import openvino as ov

    if not calibration:
        raise ValueError("hybrid int8 quantization needs calibration samples")
    model = ov.Core().read_model(str(src))
    # Collected before compression, as optimum-intel does. Weight-only: step 1 compresses them and
    # step 2 leaves them out. Every other op with weights is step 2's alone: with weights compressed
    # in step 1, the CPU plugin would keep its kernel in floating point.
    weighted = ops_with_weights(model, matmuls=not linear_int8)
    sensitive = range_sensitive_convolutions(model)
    weight_only = weighted + sensitive
    all_with_weights = ops_with_weights(model) + [op.get_friendly_name() for op in model.get_ops()
                                                  if op.get_type_name() == "Convolution"]
    with _quiet_nncf():
        model = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_ASYM,
            ignored_scope=nncf.IgnoredScope(names=[n for n in all_with_weights if n not in weight_only], validate=False),
        )
        model = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=weight_only, validate=False),
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix.DISABLE,
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1),
            ),
        )
    ov.save_model(model, str(dst), compress_to_fp16=False)
    linear = "linear layers int8; " if linear_int8 else ""
    return (f"nncf {nncf.__version__} hybrid ({linear}compress_weights INT8_ASYM on {len(weighted)} MatMul/embedding ops + "
            f"quantize TRANSFORMER, SmoothQuant off; {len(sensitive)} range-sensitive Convolutions weight-only), "
            f"{len(calibration)} calibration samples")


def ops_with_weights(model, matmuls: bool = True) -> list[str]:
    """Friendly names of MatMuls with a constant operand and of embedding Gathers (optimum-intel's
    `_collect_ops_with_weights`): what hybrid mode compresses instead of quantizing."""
    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "MatMul" and matmuls and (_constant_source(op, 0) or _constant_source(op, 1)):
            names.append(op.get_friendly_name())
        elif kind == "Gather" and op.input_value(0).get_element_type().get_type_name() in ("f16", "f32", "f64") \
                and _constant_source(op, 0):
            names.append(op.get_friendly_name())
    return names


def range_sensitive_convolutions(model) -> list[str]:
    """Convolutions reading a model input or a Concat directly (see the module docstring)."""
    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() in ("Parameter", "Concat")]


def _constant_source(op, port: int):
    """The Constant feeding `port`, looking through Convert/FakeQuantize/Reshape; None if there is none."""
    pending = deque([op.input_value(port).get_node()])
    while pending:
        node = pending.popleft()
        if node.get_type_name() == "Constant":
            return node
        if len(node.inputs()) == 0:
            return None
        if node.get_type_name() in ("Convert", "FakeQuantize", "Reshape"):
            pending.append(node.input_value(0).get_node())
    return None


class _quiet_nncf:
    """NNCF logs every ignored node at INFO; keep its tables and warnings, drop the chatter."""

    def __enter__(self):
        self._logger = logging.getLogger("nncf")
        self._level = self._logger.level
        self._logger.setLevel(max(self._level, logging.WARNING))

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
