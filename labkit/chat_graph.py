"""Which graph the chat speaks with by default (`python -m labkit chat`, `make lab`'s
report, `python -m labkit bench-chat`). The rule, in one place:

1. Quality first. A candidate must be no worse than the static INT8 KV graph (`kv-int8`,
   the lab's own INT8 with a cache): held-out perplexity, English and Chinese, at most
   `PPL_MARGIN` above it (5%), and at least as many held-out questions answered right in one
   conversation under the chat's own settings (system turn, repetition guard).
2. Then speed: of those, the fastest decode after a 256-token prompt.

`kv-int8` stays the graph of notebook 05's graded check (its cached tokens equal a recompute
bit for bit); that property matters to the check, not to someone chatting. The measurement
is made once per model and machine (about a minute for SmolLM2 on 2 cores) and reused
until a candidate graph is rebuilt.
"""
from __future__ import annotations

import time

from . import artifacts, env, fused, generate, quality, runtime
from .paths import shared_path
from .prompts import heldout, prompt_of

CANDIDATES = ("kv-fp32", "kv-int8", "fused-fp32", "fused-int8", "fused-int4")
BASELINE = "kv-int8"
# Within 5%: less than one graph's own spread between two CPUs' kernels (kv-int8's English
# perplexity: 26.86 on an AVX-512 VNNI EPYC, 24.50 on an AVX2-only one, 2026-12). Measured on
# the AVX2 EPYC, fused-int8 reads 24.90 against kv-int8's 24.50 and answers 4 questions to its 3.
PPL_MARGIN = 0.05
REPLY_TOKENS = 64
SPEED_PROMPT, SPEED_TOKENS = 256, 32


def candidates(loaded) -> list[str]:
    """The candidate graphs this model has: no fused graph where the builder cannot make one."""
    return [v for v in CANDIDATES if not (v in fused.PRECISIONS and fused.unsupported(loaded.model.config))]


def conversation(graph, tokenizer, label: str = "", max_new_tokens: int = REPLY_TOKENS):
    """Every held-out prompt (English and Chinese) in one conversation with the chat's own
    settings: a list of (prompt, expected answers or None, reply)."""
    from .chat import Chat

    chat = Chat(graph, tokenizer, label, max_new_tokens=max_new_tokens, loop=generate.cached_loop)
    replies = []
    for item in heldout()["prompts"]:
        result = chat.send(item["prompt"])
        replies.append((item["prompt"], item["expect"], result.text if result else ""))
    return replies


def answered(replies) -> int:
    return sum(any(word.lower() in reply.lower() for word in expect) for _, expect, reply in replies if expect)


def measure_graph(loaded, variant: str, threads: int | None = None) -> dict:
    """One candidate's row: perplexities, the conversation's answers, decode speed."""
    path = artifacts.path(loaded, variant)
    session = runtime.session(path, threads)
    ppl = quality.heldout_perplexities(quality.session_logits(session), loaded.tokenizer)
    replies = conversation(path, loaded.tokenizer, variant)
    ids = prompt_of(loaded.tokenizer, SPEED_PROMPT)
    generate.generate(generate.cached_loop(session), ids[:, :8], max_new_tokens=2, stop=set())  # warm-up
    result = generate.generate(generate.cached_loop(session), ids, max_new_tokens=SPEED_TOKENS, stop=set())
    return {"graph": variant, "ppl_en": round(ppl["en"], 2), "ppl_zh": round(ppl["zh"], 2),
            "correct": answered(replies), "questions": sum(1 for _, expect, _ in replies if expect),
            "tok_s": round(result.tok_s, 1), "replies": [reply for _, _, reply in replies],
            "built": path.stat().st_mtime_ns}


def measure(loaded, threads: int | None = None, log=print, reuse: bool = True):
    """Every candidate's row (a DataFrame), built first where missing; the saved
    measurement for this model, machine and threads when every graph is the one measured."""
    import json

    import pandas as pd

    threads = threads or runtime.default_threads()
    variants = candidates(loaded)
    paths = {v: artifacts.ensure(loaded, v, log) for v in variants}
    saved = shared_path("chat-graph", f"{loaded.name}-{threads}t.json")
    if reuse and saved.is_file():
        rows = json.loads(saved.read_text())
        if [r["graph"] for r in rows] == variants and all(r["built"] == paths[r["graph"]].stat().st_mtime_ns
                                                           for r in rows):
            log(f"chat graph: reusing the measurement of {time.ctime(saved.stat().st_mtime)} ({saved})")
            return pd.DataFrame(rows)
    log(f"chat graph: measuring {', '.join(variants)} once on {env.cpu_summary()} "
        "(perplexity, a conversation, speed; about a minute for SmolLM2)")
    rows = []
    for variant in variants:
        rows.append(measure_graph(loaded, variant, threads))
        log(f"  {variant}: perplexity {rows[-1]['ppl_en']} / {rows[-1]['ppl_zh']}, "
            f"{rows[-1]['correct']}/{rows[-1]['questions']} answered, {rows[-1]['tok_s']} tok/s")
    try:
        saved.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    except OSError:  # the shared artifacts are read-only in a graded kernel: measured, not kept
        pass
    return pd.DataFrame(rows)


def choose(table) -> tuple[str, str]:
    """The rule above applied to `measure`'s table: (graph, why, in a sentence)."""
    base = table.set_index("graph").loc[BASELINE]
    good = table[(table["ppl_en"] <= base["ppl_en"] * (1 + PPL_MARGIN))
                 & (table["ppl_zh"] <= base["ppl_zh"] * (1 + PPL_MARGIN)) & (table["correct"] >= base["correct"])]
    best = good.sort_values("tok_s", ascending=False).iloc[0]
    left_out = sorted(set(table["graph"]) - set(good["graph"]))
    return best["graph"], (
        f"{best['graph']}: the fastest ({best['tok_s']} tok/s after a {SPEED_PROMPT}-token prompt) of the graphs no "
        f"worse than {BASELINE} on held-out perplexity ({best['ppl_en']} / {best['ppl_zh']} against "
        f"{base['ppl_en']} / {base['ppl_zh']}) and answers ({best['correct']} against {base['correct']} of "
        f"{base['questions']})" + (f"; left out on quality: {', '.join(left_out)}" if left_out else ""))


def default(loaded, threads: int | None = None, log=print) -> tuple[str, str]:
    """The chat's default graph on this machine, and why (`choose`)."""
    return choose(measure(loaded, threads, log))
