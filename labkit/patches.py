"""Export patches: monkey patches applied while exporting, undone afterwards.

Each patch names the failure it fixes and the versions that have it. On the
pinned stack (torch 2.13, transformers 5.23) the dynamo exporter, which the lab
uses, needs no correctness patch for Llama or Qwen3: transformers 5 builds the
attention mask by index arithmetic and no longer hard-codes `is_causal` while
exporting. `export_patches()` holds what every export does use (speed).

The mask patch matters for the legacy TorchScript exporter
(`torch.onnx.export(..., dynamo=False)`), which the handbook's scripts used. It is
notebook 02's task: the student writes it, `mask_patch.legacy_export` shows the failure
it fixes, and `index_based_attention_mask` is labkit's answer (off limits while grading).

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
