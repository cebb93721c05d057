"""Reading and rewriting an ONNX model's weights one tensor at a time.

A 1.7B model's external data is 7 GB; `onnx.load` followed by `onnx.save`
holds it in memory twice. These helpers memory-map the tensor being read and
stream every tensor to the new data file, so rewriting costs one tensor of RAM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

ALIGN = 4096  # ORT memory-maps external data; page-aligned offsets keep that possible


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def read(tensor: onnx.TensorProto, base_dir: str | Path) -> np.ndarray:
    """The initializer's value; external data is memory-mapped, not read."""
    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    info = _external(tensor)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.memmap(Path(base_dir) / info["location"], dtype=dtype, mode="r",
                     offset=int(info.get("offset", 0)), shape=tuple(tensor.dims))


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def save(model: onnx.ModelProto, src_dir: str | Path, out_path: str | Path,
         replace: Callable[[str, np.ndarray], np.ndarray | None] | None = None,
         added: dict[str, np.ndarray] | None = None) -> Path:
    """Write `model` to `out_path` with every weight in `<out_path>.data`.

    Initializer values come from `src_dir` (where the model's current external
    data lives); `replace(name, value)` may return a new value for one, and
    `added` initializers are appended. Initializers no node uses are dropped.
    """
    out_path = Path(out_path)
    data_name = out_path.name + ".data"
    used = {name for node in model.graph.node for name in node.input}
    tensors = [t for t in model.graph.initializer if t.name in used]
    added = dict(added or {})
    written = []
    with open(out_path.parent / data_name, "wb") as data:
        for tensor in tensors:
            value = read(tensor, src_dir)
            new = replace(tensor.name, value) if replace else None
            written.append(_append(data, data_name, tensor.name, value if new is None else new))
        for name, value in added.items():
            written.append(_append(data, data_name, name, value))
    del model.graph.initializer[:]
    model.graph.initializer.extend(written)
    onnx.save(model, str(out_path))
    return out_path


def _append(data, data_name: str, name: str, value: np.ndarray) -> onnx.TensorProto:
    value = np.asarray(value)  # not ascontiguousarray: it turns a scalar into shape [1]
    if not value.flags.c_contiguous:
        value = value.copy(order="C")
    if value.nbytes < 1024:  # small constants stay inline, as the exporter writes them
        return numpy_helper.from_array(value, name)
    offset = -(-data.tell() // ALIGN) * ALIGN
    data.seek(offset)
    data.write(value.tobytes() if value.ndim == 0 else value.data)
    tensor = onnx.TensorProto(name=name, dims=value.shape,
                              data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", data_name), ("offset", str(offset)), ("length", str(value.nbytes))):
        tensor.external_data.add(key=key, value=val)
    return tensor
