"""One OpenVINO IR submodel -> fp16, int8-weights or int8, with OpenVINO and NNCF.

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

int8 (UNet) — weights and activations int8 in the Convolutions and the linear layers, with NNCF:
  1. nncf.compress_weights (INT8_ASYM) on the embedding weights and on the range-sensitive
     Convolutions below (weight-only);
  2. nncf.quantize on the result with the calibration dataset: every other Convolution and every
     linear layer (weights and activations) and every activation-by-activation op get FakeQuantize;
     model_type TRANSFORMER, preset MIXED (asymmetric activations), fast bias correction, overflow
     fix off, and SmoothQuant (alpha 0.95, NNCF's transformer default) on the linear layers: it
     moves per-channel activation outliers into the weights before one per-tensor scale is chosen.
This departs from optimum-intel 1.27's hybrid scheme for diffusion models (its
`_get_hybrid_mixed_quantization_config`: linear layers weight-only, SmoothQuant off), which is
kept as `hybrid=True` (bench/precision.py build --hybrid). Why, measured (bench/README.md):
- speed: on the CPU plugin hybrid leaves the linear layers computing in bf16 from int8 weights. An
  SDXL UNet is 71% linear-layer FLOPs, so hybrid int8 saved it 8% of a bf16 call; with its linear
  layers int8 (SmoothQuant, in 2 parts) a call at 512x512 takes 0.70-0.82 s against hybrid's 1.10-1.20 s.
- outliers: trained transformers carry a few activation channels tens to hundreds of times larger
  than the rest, which random test weights lack. Injected into the tiny UNet without changing its
  function (one LayerNorm channel times 100, the weights reading it divided by 100;
  tests/test_quantize.py), the noise prediction's cosine to fp32 fell from 0.999 to 0.98 with
  linear layers int8 without SmoothQuant and to 0.99 with hybrid's weight-only ones (the divided
  weights lose their precision), and stayed at 0.999 with SmoothQuant.
Memory: NNCF's SmoothQuant holds every rescaled linear weight twice (as numpy arrays in its
transformation layout and as the new constants) on top of its statistics run: SD-turbo's UNet (3.4 GB
fp32) peaked at 6.3 GB, and SDXL's (10 GB) went past this project's 24 GB five times, once from fp16
weights and once with nncf's pipeline run step by step. So a UNet whose pass would not fit is
quantized in consecutive parts (graph_parts: split where the weights divide evenly, each part
calibrated on what the float parts before it compute, the quantized parts stitched back into one
graph), as many as SMOOTH_QUANT_PEAK times its weights need (SDXL on 24 GB: 2 parts, 11 min at a
17.6 GB peak; the int8 UNet's noise prediction as near fp32 as quantized whole, tests/test_quantize.py);
past MAX_PARTS it gets optimum-intel's hybrid scheme instead, with a warning, and its manifest says so.
One deliberate difference from both, the same in the ONNX int8: the Convolutions whose input mixes
ranges that one per-tensor activation scale cannot serve stay weight-only: conv_in, reading the
latents (from pure noise to a clean image's latents, over 4 channels), and the 1x1 shortcut
Convolutions reading the up blocks' skip-connection Concats (shallow and deep features side by
side: the "shortcut splitting" problem of Q-Diffusion, Li et al. 2023). On the tiny test UNet this
took the noise prediction's cosine similarity at the lowest timesteps from 0.87 to 0.998; on SD 1.5
these Convolutions hold under 3% of the weights.
"""

import logging
import math
import tempfile
from collections import deque
from pathlib import Path

log = logging.getLogger("edgesd")
SMOOTH_QUANT_ALPHA = 0.95  # NNCF's default for MatMuls in transformer models
SMOOTH_QUANT_PEAK = 2  # peak memory / fp32 weight bytes quantizing with SmoothQuant (module docstring)
PASS_MEMORY_SHARE = 0.8  # of the available memory (the rest: page cache, calibration data, Python)
MAX_PARTS = 4  # untried past this (SDXL: 2 with 23 GB available, 3 with 12 GB): the hybrid scheme instead


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


def to_int8(src: Path, dst: Path, calibration: list[dict], hybrid: bool = False, smooth_quant: bool = True) -> str:
    """int8 as the module docstring says; `calibration` is a list of feed dicts. `hybrid`: optimum-intel's
    scheme instead (linear layers weight-only, SmoothQuant off), also taken when SmoothQuant's pass would
    not fit in memory in MAX_PARTS parts (`smooth_quant_parts`). `smooth_quant=False`: linear layers int8
    without it (bench/precision.py build --no-smooth-quant)."""
    import nncf
    import openvino as ov

    from edgesd.export import graph_parts

    if not calibration:
        raise ValueError("int8 quantization needs calibration samples")
    weight_bytes = Path(src).with_suffix(".bin").stat().st_size
    parts = smooth_quant_parts(weight_bytes) if smooth_quant and not hybrid else 1
    why_hybrid = ""
    if parts > MAX_PARTS:
        hybrid, parts = True, 1
        why_hybrid = f" (SmoothQuant's pass needs about {SMOOTH_QUANT_PEAK}x the fp32 weights in memory)"
        log.warning("int8: not enough memory to quantize this UNet's linear layers with SmoothQuant (about %sx its "
                    "%.1f GB, in up to %d parts); they stay weight-only, as optimum-intel does: int8 without their "
                    "speed-up", SMOOTH_QUANT_PEAK, weight_bytes / 2**30, MAX_PARTS)
    model = ov.Core().read_model(str(src))
    inputs = [parameter.get_friendly_name() for parameter in model.get_parameters()]
    # Collected before compression. Weight-only: step 1 compresses them and step 2 leaves them out.
    # Every other op with weights is step 2's alone: with weights compressed in step 1, the CPU
    # plugin would keep its kernel in floating point.
    weighted = ops_with_weights(model, matmuls=hybrid)
    sensitive = range_sensitive_convolutions(model)
    weight_only = weighted + sensitive
    all_with_weights = ops_with_weights(model) + [op.get_friendly_name() for op in model.get_ops()
                                                  if op.get_type_name() == "Convolution"]
    alpha = SMOOTH_QUANT_ALPHA if smooth_quant and not hybrid else -1
    with _quiet_nncf():
        model = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_ASYM,
            ignored_scope=nncf.IgnoredScope(names=[n for n in all_with_weights if n not in weight_only], validate=False),
        )

        def quantize(piece, feeds):
            return nncf.quantize(
                piece,
                nncf.Dataset(feeds),
                preset=nncf.QuantizationPreset.MIXED,
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(feeds),
                fast_bias_correction=True,
                ignored_scope=nncf.IgnoredScope(names=weight_only, validate=False),
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    overflow_fix=nncf.OverflowFix.DISABLE,
                    smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=alpha),
                ),
            )

        if parts == 1:
            model = quantize(model, calibration)
            ov.save_model(model, str(dst), compress_to_fp16=False)
        else:
            pieces = graph_parts.split(model, parts)
            feeds = graph_parts.part_feeds(pieces, calibration)
            outputs = [result.get_friendly_name() for result in model.get_results()]
            del model
            # each quantized part saved (and let go) before the next is quantized, then read back
            # memory-mapped to be stitched
            with tempfile.TemporaryDirectory(dir=Path(dst).parent) as scratch:
                saved = [Path(scratch) / f"part{index}.xml" for index in range(parts)]
                for index, path in enumerate(saved):
                    ov.save_model(quantize(pieces[index], feeds[index]), str(path), compress_to_fp16=False)
                    pieces[index] = feeds[index] = None
                model = graph_parts.stitch([ov.Core().read_model(str(path)) for path in saved], inputs, outputs)
                ov.save_model(model, str(dst), compress_to_fp16=False)
                del model
    scheme = (f"hybrid{why_hybrid}: compress_weights INT8_ASYM on {len(weighted)} MatMul/embedding ops + quantize "
              "TRANSFORMER, SmoothQuant off" if hybrid else
              f"quantize TRANSFORMER, linear layers int8, SmoothQuant {alpha if alpha > 0 else 'off'}"
              f"{f' in {parts} parts' if parts > 1 else ''}; compress_weights INT8_ASYM on {len(weighted)} embedding ops")
    return (f"nncf {nncf.__version__} ({scheme}; {len(sensitive)} range-sensitive Convolutions weight-only), "
            f"{len(calibration)} calibration samples")


def smooth_quant_parts(weight_bytes: int, available: int | None = None) -> int:
    """How many parts SmoothQuant's pass over a model of `weight_bytes` (fp32) takes to fit in the
    available memory (module docstring: SMOOTH_QUANT_PEAK times its weights, within PASS_MEMORY_SHARE
    of what is available); 1 where it fits whole or the available memory is unknown. Parts are cut
    within graph_parts.WINDOW of even, which the rounding up usually covers."""
    from edgesd.memory import available_bytes

    available = available or available_bytes()
    if available is None:
        return 1
    return max(1, math.ceil(weight_bytes * SMOOTH_QUANT_PEAK / (PASS_MEMORY_SHARE * available)))


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
