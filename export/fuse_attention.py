"""Fuse the UNet's attention into onnxruntime's MultiHeadAttention operator, in the ONNX file.

torch.onnx writes attention as MatMul -> Softmax -> MatMul, and onnxruntime then holds the full
score matrices (batch x heads x tokens^2 floats: 1 GB per copy on SD 1.5 at 512x512) several times
over; its MultiHeadAttention kernel works through them block by block on the CPU (flash attention:
tiny-sd1's UNet grows 18 MB instead of 205 MB for 92 MB of scores). Measured on the SD 1.5
(inpainting) architecture at 512x512 (bench/ort_attention.py): peak 6.9 -> 5.3 GB, the UNet step 7%
faster, its first call 43%, images within 1 level.
The pattern matching is onnxruntime's own (transformers.fusion_attention_unet), with two changes
made by subclassing:
- q, k and v keep their own MatMuls (onnxruntime packs self-attention's three weights into one), so
  a LoRA still finds each projection by its module name (edgesd.lora.module_of);
- the head count is read from a 1-element array without int() of an array (an error in numpy 2).
Only onnxruntime reads the fused file; OpenVINO's IR is converted from the unfused one.
"""

import logging
import os
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import tqdm

log = logging.getLogger("edgesd")


def fuse_unet_attention(path: Path) -> int:
    """Rewrite the ONNX UNet at `path` with its attention fused; returns how many blocks were fused."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel

    # the weights stay where they are: the fusion reads shapes and small constants only
    model = _unfused_projections_unet()(onnx.load(str(path), load_external_data=False))
    options = FusionOptions("unet")
    for kind in ("group_norm", "skip_group_norm", "bias_splitgelu", "nhwc_conv", "bias_add", "skip_layer_norm",
                 "bias_skip_layer_norm", "gelu", "packed_qkv", "packed_kv"):
        setattr(options, f"enable_{kind}", False)  # CUDA-only operators, or other numerics than the export's
    # onnx's shape inference, which the reshape fusion needs, looks for external data files relative
    # to the working directory (an in-memory model has no folder of its own)
    working_directory = os.getcwd()
    os.chdir(path.parent)
    try:  # without the progress bar onnxruntime draws for these 2 seconds
        with mock.patch.object(tqdm, "tqdm", partial(tqdm.tqdm, disable=True)):
            UnetOnnxModel.optimize(model, options)
    finally:
        os.chdir(working_directory)
    fused = sum(node.op_type == "MultiHeadAttention" for node in model.model.graph.node)
    if not fused:
        log.warning("no attention pattern of %s matched onnxruntime's fusion: it stays unfused (more memory on "
                    "onnxruntime)", path)
        return 0
    if not any(opset.domain == "com.microsoft" for opset in model.model.opset_import):
        model.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    _save(model.model, path)
    log.info("fused %d attention blocks of %s into MultiHeadAttention", fused, path.parent.name)
    return fused


def has_fused_attention(path: Path) -> bool:
    return any(node.op_type == "MultiHeadAttention" for node in onnx.load(str(path), load_external_data=False).graph.node)


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Write the graph only: weights stored in an external data file stay there, untouched."""
    temporary = path.with_name(f".{path.name}.fused")
    onnx.save_model(model, str(temporary))
    temporary.replace(path)


def _unfused_projections_unet():
    from onnxruntime.transformers.fusion_attention_unet import FusionAttentionUnet
    from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel

    class ProjectionsKeptAttention(FusionAttentionUnet):
        def get_num_heads(self, reshape_q, is_torch2: bool = False) -> int:
            if not is_torch2:
                shape = self.model.get_constant_value(reshape_q.input[1])
                return int(shape[2]) if isinstance(shape, np.ndarray) and shape.shape == (4,) else 0
            concat = self.model.get_parent(reshape_q, 1)
            if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
                return 0
            heads = self.model.get_constant_value(concat.input[2])
            return int(heads.reshape(-1)[0]) if isinstance(heads, np.ndarray) and heads.size == 1 else 0

        def create_attention_node(self, q_matmul, k_matmul, v_matmul, num_heads, hidden_size, input, output):
            if hidden_size > 0 and hidden_size % num_heads:
                return None
            node = onnx.helper.make_node(
                "MultiHeadAttention", [q_matmul.output[0], k_matmul.output[0], v_matmul.output[0]], [output],
                name=self.model.create_node_name("MultiHeadAttention"), domain="com.microsoft", num_heads=num_heads)
            self.increase_counter("MultiHeadAttention (q, k, v projections kept)")
            return node

    class Unet(UnetOnnxModel):
        def fuse_multi_head_attention(self, options=None):
            for cross in (False, True):
                ProjectionsKeptAttention(self, self.hidden_size, self.num_heads, is_cross_attention=cross,
                                         enable_packed_qkv=False, enable_packed_kv=False).apply()

    return Unet
