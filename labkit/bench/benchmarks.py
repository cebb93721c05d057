"""Benchmarks that print figures (CLI subcommands, never timed tests)."""
from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from .. import models, onnx_graph, parity, prompts, runtime
from ..export import export_onnx
from ..paths import onnx_dir


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _written(result: dict, json_path: str | Path | None) -> dict:
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
        print(f"Wrote {json_path}")
    return result


def bench_export(name: str | None = None, json_path: str | Path | None = None) -> dict:
    """Export the no-cache graph; measure wall time, peak RSS, size and logit parity."""
    started = time.perf_counter()
    loaded = models.load(name)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    path = export_onnx(loaded.model, onnx_dir(loaded.name))
    wall_s = time.perf_counter() - started
    peak = peak_rss_gb()  # before parity, which holds a second copy in ONNX Runtime
    diff = parity.max_logit_diff(loaded.model, runtime.session(path), loaded.tokenizer)
    result = {"model": loaded.name, "params": loaded.params, "load_s": round(load_s, 1),
              "wall_s": round(wall_s, 1), "peak_rss_gb": round(peak, 2),
              "onnx_bytes": onnx_graph.file_bytes(path), "max_abs_logit_diff": diff, "onnx_path": str(path)}
    print(f"{result['model']}: {result['params'] / 1e9:.2f} B params, export {result['wall_s']} s "
          f"(load {result['load_s']} s), peak RSS {result['peak_rss_gb']} GB, "
          f"{result['onnx_bytes'] / 1e9:.2f} GB on disk ({result['onnx_bytes'] / (4 * result['params']):.3f} x "
          f"4 bytes/param), max |logit diff| {diff:.1e}")
    return _written(result, json_path)


def bench_quant(name: str | None = None, json_path: str | Path | None = None) -> dict:
    """Static INT8 with the lab's recipe (sensitivity scan included): wall time,
    peak RSS, sizes, held-out perplexity, no-cache tokens/s, and greedy agreement and
    correct answers on the held-out prompts twice: as bare user turns, and after the chat's
    system turn (`prompts.CHAT_SYSTEM`), the prompt the chatbot actually sees."""
    import gc

    from .. import artifacts, calibration, quality, quantize

    name = models.resolve_name(name)
    if not artifacts.is_valid(name, "fp32"):
        # In this process the export's memory would stay with the allocator under the
        # quantization's: 18.2 GB peak at the Qwen3-1.7B shape, against 11.1 GB.
        print(f"{name}: no valid float export yet; exporting it in a separate process first", flush=True)
        subprocess.run([sys.executable, "-m", "labkit", "bench-export", "--model", name], check=True)
    loaded = models.load(name)
    fp32 = artifacts.ensure(loaded, "fp32")
    reader = calibration.PromptReader(loaded.tokenizer)
    started = time.perf_counter()
    big = loaded.params > 1e9  # keeps the 1.7B scan within minutes
    recipe = quantize.lab_recipe(loaded.model, reader, scan_feeds=6 if big else None)
    scan_s = time.perf_counter() - started
    tokenizer, model_name = loaded.tokenizer, loaded.name
    del loaded
    gc.collect()
    int8 = quantize.quantize_int8_static(fp32, onnx_dir(model_name, "int8"), reader, recipe)
    wall_s = time.perf_counter() - started
    peak = peak_rss_gb()  # before the evaluation sessions below
    result = {"model": model_name, "fp32_bytes": onnx_graph.file_bytes(fp32),
              "int8_bytes": onnx_graph.file_bytes(int8)}
    result["ratio"] = round(result["int8_bytes"] / result["fp32_bytes"], 4)
    result.update(wall_s=round(wall_s, 1), scan_s=round(scan_s, 1), peak_rss_gb=round(peak, 2))
    print(f"quantized in {result['wall_s']} s (scan {result['scan_s']} s), peak RSS {result['peak_rss_gb']} GB, "
          f"{result['ratio']:.1%} of FP32; now measuring quality and speed", flush=True)
    threads = runtime.default_threads()
    turns = {"": None, "_chat": prompts.CHAT_SYSTEM}  # result-key suffix: the system turn
    runs = {suffix: {} for suffix in turns}
    for label, path in (("fp32", fp32), ("int8", int8)):
        session = runtime.session(path, threads)
        ppl = quality.heldout_perplexities(quality.session_logits(session), tokenizer)
        result[f"ppl_{label}"] = {lang: round(value, 3) for lang, value in ppl.items()}
        for suffix, system in turns.items():
            tokens, seconds = quality.greedy_runs(session, tokenizer, system=system)
            runs[suffix][label] = tokens
            result[f"correct{suffix}_{label}"] = quality.correct(tokens, tokenizer)
            if not system:  # speed from the bare turns, as before the system-turn runs were added
                result[f"tok_s_{label}"] = round(sum(map(len, tokens)) / seconds, 2)
        del session
    for suffix in turns:
        result[f"agreement{suffix}"] = round(quality.agreement(runs[suffix]["int8"], runs[suffix]["fp32"]), 4)
    result.update(threads=threads, weight_only=list(recipe.weight_only), int8_path=str(int8))
    print(f"{model_name}: INT8 {result['int8_bytes'] / 1e6:,.1f} MB = {result['ratio']:.1%} of FP32 "
          f"{result['fp32_bytes'] / 1e6:,.1f} MB\nperplexity FP32 {result['ppl_fp32']} INT8 {result['ppl_int8']}; "
          f"greedy agreement {result['agreement']:.2f} ({result['agreement_chat']:.2f} after the chat's system turn); "
          f"held-out questions answered correctly {result['correct_fp32']} -> {result['correct_int8']} "
          f"({result['correct_chat_fp32']} -> {result['correct_chat_int8']}); "
          f"no-cache {result['tok_s_fp32']} -> {result['tok_s_int8']} tok/s "
          f"({result['tok_s_int8'] / result['tok_s_fp32']:.2f}x, {threads} threads)")
    return _written(result, json_path)


def bench_decode(name: str | None = None, json_path: str | Path | None = None,
                 out_dir: str | Path | None = None) -> list[dict]:
    """Every engine x prompt length (decode_bench.py); writes bench.csv and bench.png
    to `out_dir` (default: <artifacts>/report) and the rows as JSON if asked."""
    import json

    from .. import artifacts
    from . import decode_bench, report

    out_dir = report.folder(out_dir)
    loaded = models.load(name)
    table = decode_bench.run(loaded)
    gain = decode_bench.io_binding_gain(artifacts.path(loaded, "kv-int8"), loaded.tokenizer)
    print(f"INT8 KV decode at 256 tokens: {gain['numpy_feeds_tok_s']} tok/s with the cache as numpy arrays, "
          f"{gain['io_binding_tok_s']} with I/O binding")
    written = report.write_bench(table, out_dir)
    print(table.to_string(index=False))
    print("Wrote " + "\n      ".join(map(str, written)))
    rows = json.loads(table.to_json(orient="records"))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
        print(f"      {json_path}")
    return rows


def bench_profile(name: str | None = None, json_path: str | Path | None = None, past: int = 256) -> dict:
    """Where a decode step's time goes, per operator type, in the lab's KV graphs and the
    fused ones (decode_bench.op_profile); and for each cached graph, where its greedy
    tokens first part from recomputing the whole sequence (8 held-out prompts x 64 tokens)."""
    from .. import artifacts, env, quality
    from . import decode_bench

    loaded, cpu = models.load(name), env.cpu_summary()
    print(f"{cpu}; one decode step after {past} cached tokens, {runtime.default_threads()} threads", flush=True)
    result = {"model": loaded.name, "past": past, "isa": cpu, "graphs": {}}
    for variant in ("kv-fp32", "kv-int8", "fused-fp32", "fused-int8", "fused-int4"):
        path = artifacts.ensure(loaded, variant)
        table = decode_bench.op_profile(path, past=past)
        parted = quality.cached_vs_recomputed(runtime.session(path), loaded.tokenizer)
        exact = sum(p is None for p in parted)
        print(f"\n{variant}: {table['ms_per_step'].sum():.2f} ms of kernels in {table['kernels_per_step'].sum()} "
              f"kernels per step; cached = recomputed on {exact}/{len(parted)} prompts (first difference: {parted})\n"
              + table.head(8).to_string(index=False), flush=True)
        result["graphs"][variant] = {"ops": json.loads(table.to_json(orient="records")), "first_difference": parted}
    return _written(result, json_path)


def bench_chat(name: str | None = None, json_path: str | Path | None = None, max_new_tokens: int = 256) -> dict:
    """The chat on the KV graphs, plain greedy and with the chat's repetition guard, under the
    chat's system prompt (`prompts.CHAT_SYSTEM`) and the model template's own: on each
    held-out prompt alone, and as one conversation through all of them, how many replies loop
    (a 4-gram more than 3 times), how many stopped as going round, and how many questions
    with a known answer were answered right."""
    from .. import artifacts, chat_graph, env, generate, quality
    from ..chat import Chat

    loaded = models.load(name)
    items = [dict(item) for item in prompts.heldout()["prompts"]] + [{"prompt": "Hi! What can you do?", "expect": None}]
    rows = []
    for variant in ("kv-fp32", "kv-int8"):
        graph = artifacts.ensure(loaded, variant)
        for (system, label, sampling), mode in itertools.product(
                ((prompts.CHAT_SYSTEM, "greedy", generate.GREEDY), (prompts.CHAT_SYSTEM, "chat guard", generate.CHAT),
                 (None, "chat guard", generate.CHAT)), ("alone", "one conversation")):
            conversation = Chat(graph, loaded.tokenizer, variant, max_new_tokens=max_new_tokens,
                                sampling=sampling, system=system, loop=generate.KVCache)
            replies = []
            for item in items:
                if mode == "alone":
                    conversation.clear()
                result = conversation.send(item["prompt"])
                replies.append((item, result))
            row = {"graph": variant, "system": "the chat's" if system else "the template's",
                   "sampling": label, "mode": mode, "replies": len(replies),
                   "looping": sum(quality.loops(r.tokens) for _, r in replies),
                   "stopped_going_round": sum(r.stopped_by == "repetition" for _, r in replies),
                   "correct": sum(any(w.lower() in r.text.lower() for w in item["expect"])
                                  for item, r in replies if item["expect"]),
                   "questions": sum(1 for item, _ in replies if item["expect"]),
                   "france": replies[0][1].text[:80]}
            rows.append(row)
            print(f"{variant:8} {row['system']:14} {label:10} {mode:16} looping {row['looping']}/{row['replies']}, "
                  f"stopped {row['stopped_going_round']}, correct {row['correct']}/{row['questions']}; "
                  f"France: {row['france']!r}", flush=True)
    print("\nThe chat's default graph (labkit/chat_graph.py): every candidate on the held-out prompts, English "
          "and Chinese, in one conversation under the chat's settings", flush=True)
    table = chat_graph.measure(loaded, reuse=False)
    for _, row in table.iterrows():
        print(f"{row['graph']:10} perplexity {row['ppl_en']} / {row['ppl_zh']}, {row['correct']}/{row['questions']} "
              f"answered, {row['tok_s']} tok/s", flush=True)
        for item, reply in zip(prompts.heldout()["prompts"], row["replies"]):
            print(f"    {item['prompt']} -> {reply[:70]!r}", flush=True)
    graph, why = chat_graph.choose(table)
    print(f"default: {why}", flush=True)
    result = {"model": loaded.name, "cpu": env.cpu_summary(), "int8_note": env.int8_kernel_note(),
              "max_new_tokens": max_new_tokens, "rows": rows,
              "graphs": json.loads(table.to_json(orient="records", force_ascii=False)),
              "default": {"graph": graph, "why": why}}
    return _written(result, json_path)
