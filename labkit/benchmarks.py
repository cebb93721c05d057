"""Benchmarks that print figures (CLI subcommands, never timed tests)."""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from . import models, onnx_graph, parity, runtime
from .export import export_onnx
from .paths import onnx_dir


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def bench_export(name: str | None = None, json_path: str | Path | None = None) -> dict:
    """Export the no-cache graph; measure wall time, peak RSS, size and logit parity."""
    started = time.perf_counter()
    loaded = models.load(name)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    path = export_onnx(loaded.model, onnx_dir(loaded.name))
    wall_s = time.perf_counter() - started
    peak = peak_rss_gb()  # before parity, which holds a second copy in ONNX Runtime
    diff = parity.max_logit_diff(loaded.model, runtime.session(path), loaded.tokenizer)
    result = {"model": loaded.name, "params": loaded.params, "load_s": round(load_s, 1),
              "wall_s": round(wall_s, 1), "peak_rss_gb": round(peak, 2),
              "onnx_bytes": onnx_graph.file_bytes(path), "max_abs_logit_diff": diff, "onnx_path": str(path)}
    print(f"{result['model']}: {result['params'] / 1e9:.2f} B params, export {result['wall_s']} s "
          f"(load {result['load_s']} s), peak RSS {result['peak_rss_gb']} GB, "
          f"{result['onnx_bytes'] / 1e9:.2f} GB on disk ({result['onnx_bytes'] / (4 * result['params']):.3f} x "
          f"4 bytes/param), max |logit diff| {diff:.1e}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
        print(f"Wrote {json_path}")
    return result
