"""Grouped-query attention written for the KV-cache graph (notebook 05).

transformers' attention repeats each key/value head for the query heads that share
it (`repeat_kv`) and multiplies per query head, so in a decode step attention's two
products (query x keys, weights x values) are one row tall (M = 1). ONNX Runtime
sends a one-row product of two activations to a kernel of its own (MLAS's
`SgemmKernelM1`; the linear layers' weights are prepacked and never take it), which
adds in another order than the kernel that computes the same row inside a
whole-sequence pass. In FP32 the results differ in the last bits; in INT8 some of
those bits move an activation across a rounding boundary, and measured on SmolLM2
the cached loop's greedy tokens left the no-cache loop's within 32 tokens on 7 of 8
prompts.

Here the query heads of one key/value head are stacked as rows of one matmul
(M = groups x new tokens), so no decode step is M = 1 when heads are grouped, every
row goes through the same kernel whether it is computed alone or in a whole
sequence, and the keys and values are not copied once per query head. The
arithmetic is the same as transformers' eager attention. (A model with one query
head per key/value head would still have one-row steps; SmolLM2 groups 3, Qwen3 2.)
"""
from __future__ import annotations

import contextlib

import torch

NAME = "labkit_grouped"
METADATA_KEY = "labkit.attention"  # in the exported graph; graphs without it predate this module


def grouped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [b, heads, s, d]; key, value [b, kv_heads, t, d]; attention_mask additive
    [b, 1, s, t] or None. Returns ([b, s, heads, d], None) like transformers' functions.
    For inference and export: `dropout` is ignored."""
    batch, heads, length, dim = query.shape
    kv_heads, total = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    rows = query.reshape(batch, kv_heads, groups * length, dim)  # query head h = kv head h // groups
    scores = torch.matmul(rows, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores.view(batch, kv_heads, groups, length, total) + attention_mask[:, :, None, :, :total]
    weights = torch.softmax(scores.reshape(batch, kv_heads, groups * length, total), dim=-1, dtype=torch.float32)
    out = torch.matmul(weights.to(value.dtype), value)
    return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, eager_mask)  # additive mask, always materialised


@contextlib.contextmanager
def grouped(model):
    """Run `model` with `grouped_attention` for the duration of the block."""
    _register()
    config = model.config
    original = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield model
    finally:
        config._attn_implementation = original
