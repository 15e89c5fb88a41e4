"""ONNX -> OpenVINO IR with openvino's own converter (fp32 weights kept as they are)."""

from pathlib import Path

import openvino as ov


def convert_to_openvino(onnx_file: Path) -> Path:
    xml = onnx_file.with_name("openvino_model.xml")
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)
    return xml
