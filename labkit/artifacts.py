"""The lab's ONNX graphs for one model, built once and reused while still valid.

    fp32      notebook 02: no cache             int8      notebook 03: static INT8 of fp32
    kv-fp32   notebook 05: with a KV cache      kv-int8   static INT8 of kv-fp32, calibrated on
                                                          prefill and decode-step feeds
                                                kv-int4   4-bit weights of kv-fp32 (MatMulNBits)
    fused-fp32, fused-int8, fused-int4: the KV graph with fused kernels (fused.py), built
              by onnxruntime-genai's model builder from the same weights

A graph is reused when it loads, is newer than the graph it was made from and, for
an export, carries the stamp of the current export code; otherwise it is rebuilt,
and the log says which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import attention, fused
from .onnx_graph import BrokenOnnxFile, load_graph, metadata
from .paths import MODEL_FILE, building, onnx_dir

SOURCES = {"fp32": None, "int8": "fp32", "kv-fp32": None, "kv-int8": "kv-fp32", "kv-int4": "kv-fp32",
           **dict.fromkeys(fused.PRECISIONS)}
# A KV graph exported with transformers' attention runs, but its INT8 decode steps
# are not bit-identical to whole-sequence passes (attention.py): rebuild it.
STAMPS = {"kv-fp32": (attention.METADATA_KEY, attention.NAME), **dict.fromkeys(fused.PRECISIONS, fused.STAMP)}


def path(loaded, variant: str) -> Path:
    """`loaded` is a LoadedModel or a model name."""
    return onnx_dir(getattr(loaded, "name", loaded), variant) / MODEL_FILE


def is_valid(loaded, variant: str) -> bool:
    target = path(loaded, variant)
    try:
        graph = load_graph(target)
    except BrokenOnnxFile:
        return False
    if variant in STAMPS and metadata(graph).get(STAMPS[variant][0]) != STAMPS[variant][1]:
        return False
    source = SOURCES[variant]
    return source is None or (is_valid(loaded, source)
                              and target.stat().st_mtime >= path(loaded, source).stat().st_mtime)


def _build(loaded, variant: str) -> Path:
    from . import calibration, export, export_kv, quantize

    out = onnx_dir(loaded.name, variant)
    if variant == "fp32":
        return export.export_onnx(loaded.model, out)
    if variant == "kv-fp32":
        return export_kv.export_kv(loaded.model, out, loaded.tokenizer)
    if variant in fused.PRECISIONS:
        return fused.build(loaded, variant, out)
    source = ensure(loaded, SOURCES[variant])
    if variant == "kv-int4":
        built = quantize.quantize_int4_weight_only(source, out)
    else:
        prompts = calibration.PromptReader(loaded.tokenizer)
        reader = prompts if variant == "int8" else calibration.KVCacheReader(loaded.model, loaded.tokenizer)
        built = quantize.quantize_int8_static(source, out, reader, quantize.lab_recipe(loaded.model, prompts))
    if variant.startswith("kv-"):  # the folder runs in onnxruntime-genai like its source
        loaded.tokenizer.save_pretrained(out)
        export_kv.write_genai_config(loaded.model.config, loaded.tokenizer, out)
    return built


def ensure(loaded, variant: str, log: Callable[[str], None] = print) -> Path:
    """The graph `variant` of `loaded`'s model, built if missing or stale."""
    with building(path(loaded, variant).parent):
        if is_valid(loaded, variant):
            log(f"{variant}: reusing {path(loaded, variant)}")
            return path(loaded, variant)
        log(f"{variant}: building {path(loaded, variant)}")
        return _build(loaded, variant)
