"""Greedy generation: the reference loops that parity checks compare.

`greedy_ort` is the no-cache loop: every step feeds the whole sequence again.
"""
from __future__ import annotations

import numpy as np
import torch


def greedy_torch(model, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Exactly `new_tokens` argmax tokens from PyTorch (with its cache), no stopping."""
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                         min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=0)
    tokens = out[0, input_ids.shape[1]:].tolist()
    if len(tokens) != new_tokens:  # generate stopped on an EOS from generation_config
        raise RuntimeError("generate stopped early; pass a model whose generation_config has no EOS stop")
    return tokens


def greedy_ort(session, input_ids: np.ndarray, new_tokens: int) -> list[int]:
    """Exactly `new_tokens` argmax tokens from an ONNX session of the no-cache graph."""
    ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
    tokens = []
    for _ in range(new_tokens):
        logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        nxt = int(logits[0, -1].argmax())
        tokens.append(nxt)
        ids = np.concatenate([ids, [[nxt]]], axis=1)
    return tokens
