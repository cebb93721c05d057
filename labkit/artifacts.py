"""The lab's ONNX graphs for one model, built once and reused while still valid.

    fp32      notebook 02: no cache             int8      notebook 03: static INT8 of fp32
    kv-fp32   notebook 05: with a KV cache      kv-int8   static INT8 of kv-fp32, calibrated on
                                                          prefill and decode-step feeds
                                                kv-int4   4-bit weights of kv-fp32 (MatMulNBits)
    fused-fp32, fused-int8, fused-int4: the KV graph with fused kernels (fused.py), built
              by onnxruntime-genai's model builder from the same weights

A graph is reused when it loads, is newer than the graph it was made from and, for
an export, carries the stamp of the current export code (for static INT8: a recipe
with today's choices); otherwise it is rebuilt, and the log says which. A students'
variant that the student did not build is copied from the referee's build of it where
there is one (grading), instead of rebuilt.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from . import attention, fused
from .onnx_graph import BrokenOnnxFile, load_graph, metadata
from .paths import MODEL_FILE, STUDENT_VARIANTS, building, onnx_dir, reference_dir, staged_dir

SOURCES = {"fp32": None, "int8": "fp32", "kv-fp32": None, "kv-int8": "kv-fp32", "kv-int4": "kv-fp32",
           **dict.fromkeys(fused.PRECISIONS)}


def _stamped(key: str, value: str) -> Callable:
    return lambda graph: metadata(graph).get(key) == value


def _todays_recipe(cached: bool = False) -> Callable:
    def current(graph) -> bool:
        from .quantize import built_with_the_kv_recipe, built_with_todays_recipe

        return built_with_the_kv_recipe(graph) if cached else built_with_todays_recipe(graph)
    return current


# What a loaded graph must carry to be reused. A KV graph exported with transformers'
# attention runs, but its INT8 decode steps are not bit-identical to whole-sequence
# passes (attention.py): rebuild it. A static INT8 graph carries a recipe with today's
# choices, the KV graph's with its own (quantize.lab_recipe).
CURRENT = {"kv-fp32": _stamped(attention.METADATA_KEY, attention.NAME),
           **{v: _stamped(*fused.stamp(v)) for v in fused.PRECISIONS},
           "int8": _todays_recipe(), "kv-int8": _todays_recipe(cached=True)}


def path(loaded, variant: str) -> Path:
    """`loaded` is a LoadedModel or a model name."""
    return onnx_dir(getattr(loaded, "name", loaded), variant) / MODEL_FILE


def is_valid(loaded, variant: str) -> bool:
    target = path(loaded, variant)
    try:
        graph = load_graph(target)
    except BrokenOnnxFile:
        return False
    if variant in CURRENT and not CURRENT[variant](graph):
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
        recipe = quantize.lab_recipe(loaded.model, prompts, cached=variant == "kv-int8")
        built = quantize.quantize_int8_static(source, out, reader, recipe)
    if variant.startswith("kv-"):  # the folder runs in onnxruntime-genai like its source
        loaded.tokenizer.save_pretrained(out)
        export_kv.write_genai_config(loaded.model.config, loaded.tokenizer, out)
    return built


def _reference(loaded, variant: str) -> Path | None:
    """The referee's build of a students' variant (`paths.reference_dir()`), if it is one the
    student's own folder may take instead of building it the lab's way: the same bytes.
    fp32 always; int8 only where the student's fp32 is itself that copy, since from the
    student's own export the lab's recipe gives another graph."""
    name = getattr(loaded, "name", loaded)
    theirs = reference_dir() / "onnx" / name / variant / MODEL_FILE
    if variant not in STUDENT_VARIANTS or theirs == path(name, variant) or not theirs.is_file():
        return None
    try:
        load_graph(theirs)
    except BrokenOnnxFile:
        return None
    source = SOURCES[variant]
    if source is not None and not _same_files(path(name, source), theirs.parents[1] / source / MODEL_FILE):
        return None
    return theirs


def _same_files(mine: Path, theirs: Path) -> bool:
    """The same size and modification time, graph and weights: `copy_graph` made `mine`."""
    def stamps(graph: Path):
        return [(s.st_size, s.st_mtime_ns) for s in (graph.stat(), graph.with_name(graph.name + ".data").stat())]

    try:
        return stamps(mine) == stamps(theirs)
    except OSError:
        return False


def copy_graph(reference: Path, target: Path) -> Path:
    """Copy a reference variant's folder, times kept (so it stays newer than its source):
    about a second for SmolLM2's 540 MB fp32 graph, against 33 s to export it."""
    with staged_dir(target.parent, BrokenOnnxFile) as partial:
        for item in reference.parent.iterdir():
            if item.is_file():
                shutil.copy2(item, partial / item.name)
    return target


def ensure(loaded, variant: str, log: Callable[[str], None] = print) -> Path:
    """The graph `variant` of `loaded`'s model, built if missing or stale (or copied from
    the referee's build, `_reference`)."""
    with building(path(loaded, variant).parent):
        if is_valid(loaded, variant):
            log(f"{variant}: reusing {path(loaded, variant)}")
            return path(loaded, variant)
        if reference := _reference(loaded, variant):
            log(f"{variant}: copying {reference.parent}")
            return copy_graph(reference, path(loaded, variant))
        log(f"{variant}: building {path(loaded, variant)}")
        return _build(loaded, variant)
