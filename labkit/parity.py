"""Does the ONNX graph compute what the PyTorch model computes?

Two measures on fixed prompts in Chinese and English: the largest absolute
logit difference, and whether greedy decoding picks the same 32 tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .generate import greedy_ort, greedy_torch
from .prompts import chat_ids

PROMPTS = [
    "What is the capital of France?",
    "请用一句话介绍一下北京。",
    "Write a haiku about running a language model on a laptop.",
]
LOGIT_TOLERANCE = 1e-3
GREEDY_TOKENS = 32


@dataclass
class Parity:
    max_abs_logit_diff: float
    greedy_match: list[bool]  # one per prompt
    tokens_torch: list[list[int]]
    tokens_onnx: list[list[int]]

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= LOGIT_TOLERANCE and all(self.greedy_match)

    def summary(self) -> str:
        return (f"max |logit diff| {self.max_abs_logit_diff:.2e} (limit {LOGIT_TOLERANCE:g}); greedy "
                f"{GREEDY_TOKENS} tokens identical on {sum(self.greedy_match)}/{len(self.greedy_match)} prompts")


def max_logit_diff(model, session, tokenizer, prompts=PROMPTS) -> float:
    """Over each prompt alone and over all of them as one left-padded batch
    (padded positions are excluded: both sides compute garbage there)."""
    worst = 0.0
    batches = [tokenizer([p], return_tensors="pt") for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batches.append(tokenizer(list(prompts), return_tensors="pt", padding=True))
    finally:
        tokenizer.padding_side = side
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
        out = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(out - ref)[mask.numpy().astype(bool)].max()))
    return worst


def check_parity(model, session, tokenizer, prompts=PROMPTS, new_tokens: int = GREEDY_TOKENS) -> Parity:
    torch_tokens, onnx_tokens = [], []
    for prompt in prompts:
        ids = chat_ids(tokenizer, prompt)
        torch_tokens.append(greedy_torch(model, torch.from_numpy(ids), new_tokens))
        # PyTorch's tokens as the guess: where the graph agrees, one pass instead of 32.
        onnx_tokens.append(greedy_ort(session, ids, new_tokens, guess=torch_tokens[-1]))
    return Parity(max_logit_diff(model, session, tokenizer, prompts),
                  [a == b for a, b in zip(torch_tokens, onnx_tokens)], torch_tokens, onnx_tokens)
