"""Export patches: monkey patches applied while exporting, undone afterwards.

Each patch names the failure it fixes and the versions that have it. On the
pinned stack (torch 2.13, transformers 5.23) the dynamo exporter, which the lab
uses, needs no correctness patch for Llama or Qwen3: transformers 5 builds the
attention mask by index arithmetic and no longer hard-codes `is_causal` while
exporting. `export_patches()` holds what every export does use (speed).

The mask patch matters for the legacy TorchScript exporter
(`torch.onnx.export(..., dynamo=False)`), which the handbook's scripts used. It is
notebook 02's task: the student writes it, `legacy_export` shows the failure it
fixes, and `index_based_attention_mask` is labkit's answer (off limits while grading).

PATCHES
- `index_based_attention_mask`: transformers may build the 4-D attention mask
  with `torch.vmap` (always in transformers 4.53-4.57 with torch >= 2.6, the
  handbook's "newer attention implementation"; in 5.x whenever a model adds an
  `and_mask_function`/`or_mask_function`). The TorchScript exporter cannot
  trace vmap and fails with `RuntimeError: unordered_map::at`. The patch makes
  `sdpa_mask` expand the mask by broadcasting indices instead, which gives the
  same mask for every index-based mask function (all of transformers' own).
- `without_slices_split` (speed, not correctness): onnxscript 0.7.2's
  `SlicesSplit` rewrite rule, run by the exporter's optimizer, takes time that
  grows faster than linearly with the number of Slice nodes (two per layer from
  rotary embeddings): measured 1.3 s for 8 layers and 31 s for 30 layers per
  pass, about 60 s of SmolLM2's 120 s export. It only merges pairs of Slices
  into a Split, which ONNX Runtime does not need. The patch leaves it out.
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import transformers.masking_utils as masking


def _index_based(sdpa_mask):
    @functools.wraps(sdpa_mask)
    def patched(*args, **kwargs):
        kwargs["use_vmap"] = False
        return sdpa_mask(*args, **kwargs)

    patched.labkit_patch = True
    return patched


@contextlib.contextmanager
def index_based_attention_mask():
    """Route transformers' SDPA mask through index broadcasting instead of vmap."""
    registry = masking.AttentionMaskInterface._global_mapping
    original = registry["sdpa"]
    if getattr(original, "labkit_patch", False):  # already applied by an outer context
        yield
        return
    registry["sdpa"] = _index_based(original)
    try:
        yield
    finally:
        registry["sdpa"] = original


@contextlib.contextmanager
def without_slices_split():
    """Run the exporter's optimizer without onnxscript's SlicesSplit rule."""
    import onnxscript.rewriter as rewriter

    original = rewriter._DEFAULT_REWRITE_RULES
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in original if getattr(r, "name", "") != "SlicesSplit")
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = original


PATCHES = [without_slices_split]


@contextlib.contextmanager
def export_patches(*more):
    """Apply every patch in PATCHES, then each of `more` (context-manager factories, e.g. a
    mask patch), for the duration of an export; undo them in reverse order."""
    with contextlib.ExitStack() as stack:
        for patch in (*PATCHES, *more):
            stack.enter_context(patch())
        yield


@contextlib.contextmanager
def vmap_mask_path():
    """Make Qwen3 build its mask the way transformers 4.53-4.57 did (with vmap), by
    adding an index-based `and_mask_function` that changes nothing in the mask."""
    import transformers.models.qwen3.modeling_qwen3 as qwen3

    original = qwen3.create_causal_mask

    def with_and_mask(*args, **kwargs):
        kwargs.setdefault("and_mask_function", lambda batch, head, q, kv: kv >= 0)
        return original(*args, **kwargs)

    qwen3.create_causal_mask = with_and_mask
    try:
        yield
    finally:
        qwen3.create_causal_mask = original


class _Logits(torch.nn.Module):
    """The model with plain tensors in and out, for the legacy export. Not export.LogitsWrapper:
    that is task 1's answer, switched off in the grader's child, where this export runs inside
    the student's patch."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def legacy_export(model, path, patch=None) -> str | None:
    """Export with the TorchScript exporter on the vmap mask path, inside `patch()` when
    given (a context-manager factory); return the error message, or None when it worked."""
    from .export import INPUT_NAMES, example_inputs

    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    # The TorchScript tracer warns about every Python branch on a tensor: noise here.
    with vmap_mask_path(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with (patch() if patch is not None else contextlib.nullcontext()):
                torch.onnx.export(_Logits(model).eval(), example_inputs(model.config.vocab_size), str(path),
                                  dynamo=False, input_names=INPUT_NAMES, output_names=["logits"],
                                  dynamic_axes=axes)
        except Exception as exc:  # noqa: BLE001 - the point is to show the exporter's error
            return f"{type(exc).__name__}: {exc}"
    return None


def observe(patch) -> dict[str, bool]:
    """What `patch()` does to transformers' SDPA mask function: replaced inside the `with`,
    the original back after it, and back after a `with` whose body raised (the error
    still reaching the caller)."""
    registry = masking.AttentionMaskInterface._global_mapping
    original = registry["sdpa"]
    seen = {}
    with patch():
        seen["replaced"] = registry["sdpa"] is not original
    seen["restored"] = registry["sdpa"] is original
    registry["sdpa"] = original
    try:
        with patch():
            raise LookupError("a failing export")
    except LookupError:
        seen["error_passed"] = True
    else:
        seen["error_passed"] = False
    seen["restored_after_error"] = registry["sdpa"] is original
    registry["sdpa"] = original
    return seen
