"""What each step of the lab bought: one table of engines x prompt lengths, measured
in one run on this machine (`python -m labkit bench`, notebook 05).

Each row: file size and compression ratio vs FP32, time to first token, decode
tokens/s (new tokens after the first, over the time after the first), peak RSS
while the row ran, and quality vs FP32 (held-out English perplexity, greedy-token
agreement). Weight bandwidth = bytes of weights per token x tokens/s, next to the
machine's own memory bandwidth: a decode step reads every weight once, so that
is the ceiling for a cached loop.
"""
from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import psutil

from .. import artifacts, env, fused, generate, quality, runtime
from ..gguf_convert import bundled_gguf
from ..onnx_graph import file_bytes
from ..paths import cached_table, shared_path
from .peer_process import PeerFailed
from .peers import NOT_INSTALLED, genai_runner, llama_cpp_installed, llama_cpp_runner, q8_0_gguf
from ..export_kv import token_feed
from ..prompts import chat_ids, heldout, prompt_of

PROMPT_LENGTHS = (32, 256, 1024)
NEW_TOKENS = 32          # cached loops
NEW_TOKENS_NO_CACHE = 8  # each no-cache step recomputes the whole prompt: a few steps tell the rate


@dataclass
class Engine:
    engine: str           # "pytorch", "onnxruntime", "onnxruntime-genai", "llama.cpp"
    precision: str
    cache: bool
    bytes: int
    open: Callable[[], Callable[[np.ndarray, int], tuple[list[int], float, float]]]
    # open() -> run(prompt_ids, new_tokens) -> (tokens, ttft_s, total_s); where a run has
    # run.answer(prompt_ids, new_tokens, guess), it gives the same tokens, a guess checked in one pass
    logits: Callable[[], quality.Logits] | None = None  # for perplexity; None: not measured
    graph: Path | None = None


class PeakRSS:
    """Highest resident memory of this process while the block runs (sampled)."""

    def __enter__(self):
        self.peak = psutil.Process().memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        process = psutil.Process()
        while not self._done.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak / 1e9


def memory_bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth of this machine (read + write), best of `repeats`."""
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def _ort(engine: str, precision: str, cache: bool, path: Path, threads: int) -> Engine:
    loop = generate.cached_loop if cache else generate.NoCache
    return Engine(engine, precision, cache, file_bytes(path), _ort_runner(path, loop, threads),
                  lambda: quality.session_logits(runtime.session(path, threads)), path)


def _ort_runner(path: Path, loop, threads: int):
    def open_():
        session = runtime.session(path, threads)

        def run(ids, new_tokens):
            result = generate.generate(loop(session), ids, max_new_tokens=new_tokens, stop=set())
            return result.tokens, result.ttft_s, result.seconds
        if loop is generate.NoCache:
            run.answer = lambda ids, new_tokens, guess: generate.greedy_ort(session, ids, new_tokens, guess=guess)
        return run
    return open_


def _torch_runner(model, cache: bool):
    def open_():
        import torch

        def run(ids, new_tokens):
            started = time.perf_counter()
            tensor = torch.from_numpy(ids)
            tokens, ttft = [], 0.0
            with torch.inference_mode():
                if cache:  # transformers' own generate: a KV cache, one token per step
                    out = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                    total = time.perf_counter() - started
                    first = time.perf_counter()
                    model(tensor)  # the prefill alone: generate does not report its first token's time
                    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - first, total
                for _ in range(new_tokens):  # eager, no cache: the whole sequence every step
                    logits = model(tensor, use_cache=False).logits
                    tokens.append(int(logits[0, -1].argmax()))
                    ttft = ttft or time.perf_counter() - started
                    tensor = torch.cat([tensor, torch.tensor([[tokens[-1]]])], dim=1)
            return tokens, ttft, time.perf_counter() - started
        if not cache:
            run.answer = lambda ids, new_tokens, guess: generate.greedy_eager(model, ids, new_tokens, guess)
        return run
    return open_


def engines(loaded, threads: int, log=print, peers: bool = True) -> list[Engine]:
    """Every engine the benchmark compares, graphs built or reused first."""
    variants = ["fp32", "int8", "kv-fp32", "kv-int8", "kv-int4"]
    if reason := fused.unsupported(loaded.model.config):
        log(f"fused graphs: skipped, {reason}")
    else:
        variants += list(fused.PRECISIONS)
    graphs = {v: artifacts.ensure(loaded, v, log) for v in variants}
    fp32_bytes = file_bytes(graphs["fp32"])
    logits = lambda: quality.torch_logits(loaded.model)  # noqa: E731
    rows = [
        Engine("pytorch", "fp32", False, fp32_bytes, _torch_runner(loaded.model, cache=False), logits, graphs["fp32"]),
        Engine("pytorch", "fp32", True, fp32_bytes, _torch_runner(loaded.model, cache=True), logits, graphs["fp32"]),
        _ort("onnxruntime", "fp32", False, graphs["fp32"], threads),
        _ort("onnxruntime", "fp32", True, graphs["kv-fp32"], threads),
        _ort("onnxruntime", "int8", False, graphs["int8"], threads),
        _ort("onnxruntime", "int8", True, graphs["kv-int8"], threads),
        _ort("onnxruntime", "int4", True, graphs["kv-int4"], threads),
        *(_ort("onnxruntime-fused", precision, True, graphs[v], threads)
          for v, (precision, _) in fused.PRECISIONS.items() if v in graphs),
    ]
    return rows + peer_engines(loaded, graphs, threads, log) if peers else rows


def peer_engines(loaded, graphs: dict, threads: int, log=print) -> list[Engine]:
    """The other engines, each in a child process of its own (peers.py): one that is missing
    or cannot start is still a row, whose open() raises PeerFailed saying why."""
    rows = [Engine("onnxruntime-genai", fused.PRECISIONS[v][0], True, file_bytes(graphs[v]), genai_runner(graphs[v].parent))
            for v in ("fused-int8", "fused-int4") if v in graphs]  # the same fused graphs in genai's own loop
    if loaded.name != "smollm2-135m":
        log(f"peer llama.cpp: only run on the bundled GGUF, not {loaded.name}; skipped")
        return rows
    # Q4_1: the very file the lab's float32 model was converted from; Q8_0 quantized from it
    for precision in ("q8_0", "q4_1"):
        try:
            if not llama_cpp_installed():
                raise PeerFailed(NOT_INSTALLED)
            gguf = q8_0_gguf() if precision == "q8_0" else bundled_gguf()
            rows.append(Engine("llama.cpp", precision, True, gguf.stat().st_size, llama_cpp_runner(gguf, threads)))
        except PeerFailed as failure:
            rows.append(Engine("llama.cpp", precision, True, 0, _fails(failure)))
    return rows


def _fails(failure: PeerFailed):
    def open_():
        raise failure
    return open_


def run(loaded, lengths=PROMPT_LENGTHS, threads: int | None = None, log=print, peers: bool = True,
        reuse: bool = False):
    """The benchmark table (a pandas DataFrame), one row per engine and prompt length.
    Every run is saved; `reuse=True` returns the last one saved for the same model, prompt
    lengths, threads and peers instead of measuring again (autograding a class: the
    benchmark does not depend on the student's code and takes minutes)."""
    threads = threads or runtime.default_threads()
    saved = shared_path("bench", f"{loaded.name}-{'-'.join(map(str, lengths))}-{threads}t"
                                 f"{'-peers' if peers else ''}.csv")

    def reused(path):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        log(f"reusing the benchmark measured on this machine at {when} ({path})")

    return cached_table(saved, lambda: measure(loaded, engines(loaded, threads, log, peers), lengths, threads, log),
                        reuse, reused)


def measure(loaded, table: list[Engine], lengths=PROMPT_LENGTHS, threads: int | None = None, log=print):
    """The benchmark of these engines (the first is the reference: PyTorch's FP32). A peer
    that fails (PeerFailed: crashed, timed out, not installed) gets rows with its `status`
    and no figures; the other rows are measured as if it were not there."""
    import pandas as pd
    from tqdm.auto import tqdm

    threads = threads or runtime.default_threads()
    reference_tokens = None
    perplexities: dict = {}
    rows = []
    bandwidth = memory_bandwidth_gb_s()
    cpu = env.cpu_summary()
    log(f"{cpu}; memory bandwidth (copy): {bandwidth:.1f} GB/s; {threads} threads")
    fp32_bytes = table[0].bytes
    held_out_ids = [chat_ids(loaded.tokenizer, item["prompt"]) for item in heldout()["prompts"]]
    for engine in tqdm(table, desc="bench", unit="engine"):
        gc.collect()
        common = {"engine": engine.engine, "precision": engine.precision, "cache": engine.cache,
                  "bytes": engine.bytes, "ratio": round(engine.bytes / fp32_bytes, 4) if engine.bytes else None}
        try:
            measured, agreement_runs, peak_rss, build = _run_engine(engine, loaded.tokenizer, lengths, held_out_ids,
                                                                      reference_tokens)
        except PeerFailed as failure:
            log(f"{engine.engine} {engine.precision}: {failure}; its row says so, the benchmark goes on")
            rows += [{**common, "prompt_len": length, "status": str(failure), "cpu": cpu} for length in lengths]
            continue
        if reference_tokens is None:
            reference_tokens = agreement_runs
        if engine.logits is not None and engine.graph not in perplexities:  # once per graph, outside the RSS
            # English only, the table's column: a graph that gives the last position's logits
            # reads the text one token at a time (quality.session_logits).
            perplexities[engine.graph] = quality.perplexity(engine.logits(), loaded.tokenizer, heldout()["text_en"])
        for length, count, ttft, total in measured:
            tok_s = (count - 1) / (total - ttft) if count > 1 and total > ttft else 0.0
            rows.append({**common, "ttft_s": round(ttft, 4), "prompt_len": length, "tok_s": round(tok_s, 2),
                         "peak_rss_gb": round(peak_rss / 1e9, 2),
                         "agreement": round(quality.agreement(agreement_runs, reference_tokens), 4),
                         "ppl_en": round(perplexities[engine.graph], 2) if engine.graph in perplexities else None,
                         "weight_gb_s": round(engine.bytes * tok_s / 1e9, 2),
                         "memory_gb_s": round(bandwidth, 1), "cpu": cpu, "build": build, "status": "ok"})
        log(f"{engine.engine} {engine.precision} {'KV' if engine.cache else 'no cache'}: " + ", ".join(
            f"{r['prompt_len']} tok {r['tok_s']} tok/s" for r in rows[-len(lengths):]))
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["engine", "precision", "cache", "bytes", "ratio", "ttft_s", "prompt_len", "tok_s", "peak_rss_gb",
           "agreement", "ppl_en", "weight_gb_s", "memory_gb_s", "cpu", "build", "status"]


def _run_engine(engine: Engine, tokenizer, lengths, held_out_ids, reference_tokens):
    """One engine's runs: (length, tokens, ttft, total) per prompt length, its greedy
    answers to the held-out prompts, its peak RSS in bytes, what it was built with."""
    with PeakRSS() as peak:
        run_ = engine.open()
        try:
            # The agreement runs: each no-cache row checks a guess of its answers in one pass
            # (the reference row PyTorch's cached answers, the ORT rows the reference's). SmolLM2
            # at one prompt length, VNNI: the PyTorch row 40 -> 15 s, ORT FP32 26.5 -> 5.4 s, ORT
            # INT8 13 -> 5.3 s, the table 131 -> 75 s, every agreement the same.
            answer, guesses = getattr(run_, "answer", None), reference_tokens or [None] * len(held_out_ids)
            agreement_runs = [answer(ids, 16, guess) if answer else run_(ids, 16)[0]
                              for ids, guess in zip(held_out_ids, guesses)]
            measured = []
            for length in lengths:
                ids = prompt_of(tokenizer, length)
                new = NEW_TOKENS if engine.cache else NEW_TOKENS_NO_CACHE
                run_(ids[:, :8], 2)  # warm-up: first-run allocations are not the engine's speed
                tokens, ttft, total = run_(ids, new)
                measured.append((length, len(tokens), ttft, total))
        finally:
            if hasattr(run_, "close"):
                run_.close()
    # a peer's memory is its own process's, not this one's
    return measured, agreement_runs, getattr(run_, "peak_rss_bytes", peak.peak), getattr(run_, "build", "")


def io_binding_gain(path: Path, tokenizer, prompt_len: int = 256, threads: int | None = None) -> dict:
    """Decode tokens/s of the cached loop with the cache fed back as numpy arrays and
    with I/O binding (the cache stays in ONNX Runtime's buffers)."""
    session = runtime.session(path, threads)
    ids = prompt_of(tokenizer, prompt_len)
    speeds = {}
    for binding in (False, True, False, True):  # alternated: drift of the machine hits both
        result = generate.generate(generate.KVCache(session, io_binding=binding), ids, max_new_tokens=NEW_TOKENS,
                                   stop=set())
        speeds.setdefault(binding, []).append(result.tok_s)
    return {"numpy_feeds_tok_s": round(max(speeds[False]), 2), "io_binding_tok_s": round(max(speeds[True]), 2)}


def op_profile(path: Path, past: int = 256, steps: int = 16, threads: int | None = None):
    """Where one decode step's time goes: ONNX Runtime's profiler over `steps` steps of one
    new token after `past` cached ones, summed per operator type (a DataFrame: op, ms per
    step, share of kernel time, kernels per step). The profiler's own bookkeeping adds a
    little to each kernel, so a graph of many small kernels reads a bit slower here than
    in `run`."""
    import json
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="labkit-profile-") as scratch:
        session = runtime.session(path, threads, profile=str(Path(scratch) / "step"))
        inputs = {i.name: i for i in session.get_inputs()}
        feed = {k: v for k, v in token_feed(np.array([[42]], np.int64), past).items() if k in inputs}
        for name, value in inputs.items():
            if name.startswith("past_key_values."):
                _, heads, _, head_dim = value.shape
                feed[name] = np.zeros((1, heads, past, head_dim), np.float32)
        session.run(None, feed)  # the first run allocates
        for _ in range(steps):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    table = pd.DataFrame({"op": [e["args"]["op_name"] for e in kernels], "us": [e["dur"] for e in kernels]})
    table = table.groupby("op")["us"].agg(["sum", "count"]).sort_values("sum", ascending=False)
    runs = steps + 1
    return pd.DataFrame({"op": table.index, "ms_per_step": (table["sum"] / runs / 1000).round(3).values,
                         "share": (table["sum"] / table["sum"].sum()).round(3).values,
                         "kernels_per_step": (table["count"] // runs).values})
