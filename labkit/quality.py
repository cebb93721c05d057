"""How much a compressed model still behaves like the original: perplexity on
held-out text and greedy-token agreement on held-out prompts (notebook 03)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .generate import greedy_ort
from .parity import GREEDY_TOKENS
from .prompts import chat_ids, heldout

Logits = Callable[[np.ndarray], np.ndarray]  # int64 [1, T] -> float32 [1, T, vocab]


def session_logits(session) -> Logits:
    """All positions' logits from a graph with or without a KV cache (then: an empty past).
    A graph that gives the last position's only (a fused graph, `fused.OPTIONS`; the lab's
    INT8 KV graph, `quantize._dynamic_head`) has them one position at a time through its
    cache, teacher-forced."""
    from .generate import KVCache, WrongGraph, cached_loop

    try:
        kv = KVCache(session, io_binding=False)
    except WrongGraph:
        return lambda ids: session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    if next(o for o in session.get_outputs() if o.name == "logits").shape[1] == 1:
        def stepped(ids: np.ndarray) -> np.ndarray:
            loop = cached_loop(session)
            rows = [loop.start(ids[:, :1])] + [loop.step(int(token)) for token in ids[0, 1:]]
            return np.stack(rows)[None]

        return stepped

    names = {i.name for i in session.get_inputs()}  # a fused graph takes no position_ids

    def run(ids: np.ndarray) -> np.ndarray:
        from .export_kv import token_feed

        feed = {k: v for k, v in token_feed(ids, 0).items() if k in names}
        return session.run(["logits"], {**feed, **dict.fromkeys(kv.past_names, kv.empty)})[0]

    return run


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


def next_token_agreement(logits: Logits, reference: Logits, tokenizer, max_tokens: int = 512) -> dict[str, float]:
    """Per held-out text (en, zh): the share of positions where both models predict the same
    next token, each reading the same text. Unlike greedy answers it never rests on one close
    call: measured on SmolLM2, the lab's INT8 0.82 / 0.83, ONNX Runtime's defaults 0.56 / 0.37."""
    data = heldout()
    shares = {}
    for lang in ("en", "zh"):
        ids = np.asarray([tokenizer(data[f"text_{lang}"], add_special_tokens=False)["input_ids"][:max_tokens]],
                         dtype=np.int64)
        shares[lang] = float((logits(ids).argmax(-1) == reference(ids).argmax(-1)).mean())
    return shares


def prefix_agreement(a: list[int], b: list[int]) -> float:
    """Share of tokens generated before the two sequences first differ: after a
    divergence the two models continue different texts, so later matches mean nothing."""
    same = first_difference(a, b)
    same = min(len(a), len(b)) if same is None else same
    return same / max(len(a), len(b), 1)


def greedy_runs(session, tokenizer, new_tokens: int = GREEDY_TOKENS,
                system: str | None = None) -> tuple[list[list[int]], float]:
    """Greedy tokens for each held-out prompt, as a bare user turn or after the system turn
    `system`, and the seconds all of them took."""
    runs, seconds = [], 0.0
    for item in heldout()["prompts"]:
        ids = chat_ids(tokenizer, item["prompt"], system=system)
        started = time.perf_counter()
        runs.append(greedy_ort(session, ids, new_tokens))
        seconds += time.perf_counter() - started
    return runs, seconds


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ; None when they do not."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def cached_vs_recomputed(session, tokenizer, prompts: int = 8, new_tokens: int = 64) -> list[int | None]:
    """For each of the first `prompts` held-out prompts: where the cached loop's greedy
    tokens (`generate.cached_loop`) first differ from recomputing the whole sequence at
    every step on the same graph, or None where all `new_tokens` agree."""
    from .generate import cached_loop, generate

    found, loop = [], cached_loop(session)
    for item in heldout()["prompts"][:prompts]:
        ids = chat_ids(tokenizer, item["prompt"])
        cached = generate(loop, ids, max_new_tokens=new_tokens, stop=set()).tokens
        recomputed = []
        while len(recomputed) < new_tokens:  # start() begins from an empty cache every time
            sequence = np.concatenate([ids, np.array([recomputed], np.int64).reshape(1, -1)], axis=1)
            recomputed.append(int(loop.start(sequence).argmax()))
        found.append(first_difference(cached, recomputed))
    return found


def agreement(runs: list[list[int]], reference_runs: list[list[int]]) -> float:
    """Mean prefix agreement over paired runs."""
    return float(np.mean([prefix_agreement(a, b) for a, b in zip(runs, reference_runs)]))


def correct(runs: list[list[int]], tokenizer) -> int:
    """How many held-out questions with a known answer the runs answer correctly
    (the expected word appears in the greedy answer)."""
    answers = [tokenizer.decode(tokens, skip_special_tokens=True).lower() for tokens in runs]
    return sum(any(word.lower() in answer for word in item["expect"])
               for item, answer in zip(heldout()["prompts"], answers) if item["expect"])


def compare(models: dict[str, str | Path], tokenizer, reference: str = "FP32",
            new_tokens: int = GREEDY_TOKENS, threads: int | None = None):
    """One row per graph: size, ratio to the reference, held-out perplexity, greedy
    agreement with the reference, held-out questions answered correctly and
    no-cache tokens/s, all on the same threads."""
    import pandas as pd

    from .onnx_graph import file_bytes
    from .runtime import session

    runs, rows = {}, []
    for label, path in models.items():
        graph = session(path, threads)
        ppl = heldout_perplexities(session_logits(graph), tokenizer)
        runs[label], seconds = greedy_runs(graph, tokenizer, new_tokens)
        rows.append({"model": label, "MB": file_bytes(path) / 1e6, "ppl_en": ppl["en"], "ppl_zh": ppl["zh"],
                     "tok_s": sum(map(len, runs[label])) / seconds})
    table = pd.DataFrame(rows).set_index("model")
    table.insert(1, "ratio", table["MB"] / table.loc[reference, "MB"])
    table.insert(4, "agreement", [agreement(runs[label], runs[reference]) for label in table.index])
    table.insert(5, "correct", [correct(runs[label], tokenizer) for label in table.index])
    return table.round({"MB": 1, "ratio": 3, "ppl_en": 2, "ppl_zh": 2, "agreement": 2, "tok_s": 1})


def side_by_side(sessions: dict, tokenizer, prompt: str, new_tokens: int = 24) -> str:
    """Each graph's greedy answer to `prompt`, up to its end of turn, one per line."""
    ids = chat_ids(tokenizer, prompt)
    width = max(map(len, sessions))
    lines = [f"Q: {prompt}"]
    for label, session in sessions.items():
        tokens = greedy_ort(session, ids, new_tokens)
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
        lines.append(f"  {label:<{width}}  {tokenizer.decode(tokens, skip_special_tokens=True).strip()}")
    return "\n".join(lines)


def loops(tokens: list[int], n: int = 4, times: int = 3) -> bool:
    """A reply that repeats some n-gram of its tokens more than `times` times."""
    from collections import Counter

    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return bool(grams) and max(grams.values()) > times
