"""Notebook 02's mask-patch task, shown and observed: the legacy TorchScript export on the
vmap mask path (which fails without a patch), and what a patch does to transformers' mask
registry. The patches themselves live in `patches.py`."""
from __future__ import annotations

import contextlib
import warnings

import torch
import transformers.masking_utils as masking

from .export import INPUT_NAMES, example_inputs


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
