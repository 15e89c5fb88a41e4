"""The on-disk formats a submodel comes in: its main file and every file it has. The lowest layer
(imports nothing), so the model folder knows its files without importing the engines' registry
(sessions/, which says which engine runs which format)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # the manifest's key
    main_file: str  # the file that names a submodel in this format
    files: tuple[str, ...]  # every file of a submodel in this format


FORMATS = {f.name: f for f in (
    Format("onnx", "model.onnx", ("model.onnx", "model.onnx_data")),
    Format("openvino", "openvino_model.xml", ("openvino_model.xml", "openvino_model.bin")),
)}
