"""Reading an exported ONNX model without loading its weights: what graders and
students check (inputs, outputs, ops, size), and clear errors for broken files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from .errors import LabkitError

DTYPES = {onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
          onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
          onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT8: "int8",
          onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
          onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4"}


class BrokenOnnxFile(LabkitError, RuntimeError):
    pass


def load_graph(path: str | Path) -> onnx.ModelProto:
    """The model's graph and metadata, weights left on disk. Raises BrokenOnnxFile
    naming the missing file when the model or an external-data file is absent."""
    path = Path(path)
    if not path.is_file():
        raise BrokenOnnxFile(f"no ONNX model at {path}; run the export step first")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise BrokenOnnxFile(f"{path} is not a readable ONNX file ({exc}); export it again") from exc
    missing = sorted(set(external_files(model)) - {p.name for p in path.parent.iterdir()})
    if missing:
        raise BrokenOnnxFile(f"{path.name} keeps its weights in {', '.join(missing)}, which is missing "
                             f"from {path.parent}; copy it next to the model or export again")
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add(key=key)
    entry.value = value


def external_files(model: onnx.ModelProto) -> list[str]:
    """Names of the external-data files the model's initializers point to."""
    found = []
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = next(e.value for e in tensor.external_data if e.key == "location")
            if location not in found:
                found.append(location)
    return found


def replace_node(graph: onnx.GraphProto, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    """`new`, in order, where `old` was (the graph stays topologically sorted)."""
    position = list(graph.node).index(old)
    graph.node.remove(old)
    for offset, node in enumerate(new):
        graph.node.insert(position + offset, node)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Each tensor a node computes -> that node."""
    return {output: node for node in graph.node for output in node.output}


def file_bytes(path: str | Path) -> int:
    """Size on disk of the model file plus its external data."""
    path = Path(path)
    model = load_graph(path)
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in external_files(model))


def _value_info(value) -> dict:
    tensor = value.type.tensor_type
    return {"name": value.name, "dtype": DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
            "shape": [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                      for d in tensor.shape.dim]}


def graph_io(path_or_model) -> dict[str, list[dict]]:
    """Inputs and outputs: name, dtype and shape (a str is a symbolic dim, an int a fixed one)."""
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_graph(path_or_model)
    init = {t.name for t in model.graph.initializer}
    return {"inputs": [_value_info(v) for v in model.graph.input if v.name not in init],
            "outputs": [_value_info(v) for v in model.graph.output]}


def op_histogram(path_or_model) -> Counter:
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_graph(path_or_model)
    return Counter(node.op_type for node in model.graph.node)


def describe(path: str | Path) -> str:
    """A short text summary for notebooks."""
    io = graph_io(path)
    lines = [f"{Path(path).name}: {file_bytes(path) / 1e6:,.1f} MB with external data"]
    for kind in ("inputs", "outputs"):
        for v in io[kind]:
            lines.append(f"  {kind[:-1]:<6} {v['name']:<16} {v['dtype']:<8} {v['shape']}")
    ops = op_histogram(path).most_common(8)
    lines.append("  ops    " + ", ".join(f"{op} {n}" for op, n in ops))
    return "\n".join(lines)
