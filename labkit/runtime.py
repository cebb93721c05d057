"""Opening ONNX Runtime sessions the same way everywhere in the lab."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from .onnx_graph import BrokenOnnxFile, load_graph


def default_threads() -> int:
    """$LABKIT_THREADS (set by the parallel grader), else the cores this process may use
    (a container or taskset may allow fewer than the machine has)."""
    return int(os.environ.get("LABKIT_THREADS") or 0) or len(os.sched_getaffinity(0))


def _options(threads: int | None, profile: str | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3  # ORT's warnings go to stderr, which zeroes a graded cell
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return options


def session(path: str | Path, threads: int | None = None, profile: str | None = None) -> ort.InferenceSession:
    """A CPU session; `threads` defaults to the cores this process may use. `profile`: a
    file prefix for ONNX Runtime's profile of every run (`end_profiling()` writes it).
    A missing model or external-data file raises BrokenOnnxFile naming it."""
    load_graph(path)  # clear errors before ORT's terse ones
    try:
        return ort.InferenceSession(str(path), _options(threads, profile), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own hierarchy
        raise BrokenOnnxFile(f"ONNX Runtime cannot load {path}: {exc}") from exc


def observing_session(path: str | Path, tensors: list[str], threads: int | None = None) -> ort.InferenceSession:
    """A session that also returns the intermediate `tensors`, unoptimized so that
    none is fused away. The graph is edited in memory without its weights, which
    the session reads from the model's own folder: no copy of a 7 GB file."""
    path = Path(path)
    graph = load_graph(path)
    for name in tensors:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = _options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
