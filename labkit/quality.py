"""How much a compressed model still behaves like the original: perplexity on
held-out text and greedy-token agreement on held-out prompts (notebook 03)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .calibration import heldout
from .generate import greedy_ort
from .parity import GREEDY_TOKENS, chat_ids

Logits = Callable[[np.ndarray], np.ndarray]  # int64 [1, T] -> float32 [1, T, vocab]


def session_logits(session) -> Logits:
    return lambda ids: session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


def torch_logits(model) -> Logits:
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()

    return run


def perplexity(logits: Logits, tokenizer, text: str, max_tokens: int = 512) -> float:
    """exp(mean negative log-likelihood) of each next token of `text`, one forward pass."""
    ids = np.asarray([tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]], dtype=np.int64)
    if ids.shape[1] < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    out = logits(ids)[0, :-1].astype(np.float64)
    out -= out.max(axis=-1, keepdims=True)
    log_probs = out - np.log(np.exp(out).sum(axis=-1, keepdims=True))
    nll = -log_probs[np.arange(len(out)), ids[0, 1:]].mean()
    return math.exp(nll)


def heldout_perplexities(logits: Logits, tokenizer) -> dict[str, float]:
    data = heldout()
    return {"en": perplexity(logits, tokenizer, data["text_en"]), "zh": perplexity(logits, tokenizer, data["text_zh"])}


def prefix_agreement(a: list[int], b: list[int]) -> float:
    """Share of tokens generated before the two sequences first differ: after a
    divergence the two models continue different texts, so later matches mean nothing."""
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


def greedy_agreement(session, reference_session, tokenizer, new_tokens: int = GREEDY_TOKENS) -> float:
    """Mean prefix agreement with the reference graph over the held-out prompts."""
    scores = []
    for item in heldout()["prompts"]:
        ids = chat_ids(tokenizer, item["prompt"]).numpy()
        scores.append(prefix_agreement(greedy_ort(session, ids, new_tokens),
                                       greedy_ort(reference_session, ids, new_tokens)))
    return float(np.mean(scores))
