"""The lab's main job (`make lab`, `python -m labkit lab`): run every step that
exists, headless, and write one report.

Notebook 01's environment report and model check, 02's exports (without and
with a KV cache) and parity check, 03's INT8 graphs, 04's chat with each graph,
05's benchmark and chart: one markdown report with the chart, the table and the
transcripts.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import env, models, onnx_graph, parity, runtime
from ..prompts import CHAT_SYSTEM

CHAT_MESSAGES = ("What is the capital of France?", "请用一句话介绍一下你自己。")
GRAPHS = {"FP32, no cache": ("fp32", "NoCache"), "INT8, no cache": ("int8", "NoCache"),
          "FP32, KV cache": ("kv-fp32", "KVCache"), "INT8, KV cache": ("kv-int8", "KVCache")}


def chat_samples(loaded, messages=CHAT_MESSAGES, max_new_tokens: int = 48) -> dict[str, str]:
    """A short conversation with each graph (notebook 04's chat, notebook 05's loop)."""
    from .. import artifacts, generate
    from ..chat import Chat

    transcripts = {}
    for label, (variant, loop) in GRAPHS.items():
        chat = Chat(artifacts.path(loaded, variant), loaded.tokenizer, f"{loaded.name} {label}",
                    max_new_tokens=max_new_tokens, loop=getattr(generate, loop))
        for message in messages:
            chat.send(message)
        transcripts[label] = chat.markdown()
        print(f"-- {label}\n{transcripts[label]}", flush=True)
    return transcripts


DEFAULT_CHAT = ("What is the capital of France?", "How many days are there in a week?",
                "Write one sentence about the sea.")


def default_chat(loaded, messages=DEFAULT_CHAT, max_new_tokens: int = 48) -> tuple[str, str]:
    """One conversation with the chat's default graph (chat_graph.py's rule): why that
    graph, and the transcript."""
    from .. import artifacts, chat_graph, generate
    from ..chat import Chat

    graph, why = chat_graph.default(loaded)
    chat = Chat(artifacts.path(loaded, graph), loaded.tokenizer, f"{loaded.name} {graph}",
                max_new_tokens=max_new_tokens, loop=generate.cached_loop)
    for message in messages:
        chat.send(message)
    print(f"-- the chat's default graph: {why}\n{chat.markdown()}", flush=True)
    return why, chat.markdown()


def run_lab(name: str | None = None, out_dir: Path | None = None,
            lengths: tuple[int, ...] | None = None, peers: bool = True) -> Path:
    """Run the lab end to end; return the report's path. Graphs that are still valid
    from an earlier run are reused (the log says which). `lengths`: the benchmark's
    prompt lengths (default decode_bench.PROMPT_LENGTHS); `peers=False` leaves out
    onnxruntime-genai's loop and llama.cpp, as notebook 05 does."""
    from .. import artifacts, quality
    from . import decode_bench, report

    out_dir = report.folder(out_dir)

    print("== 01 environment ==", flush=True)
    env_report = env.environment_report()
    print(env.format_report(env_report), flush=True)
    (out_dir / "env.json").write_text(json.dumps(env_report, indent=1))

    print("\n== 01 model check ==", flush=True)
    loaded = models.load(name)
    check = models.model_check(loaded)
    print(f"{check['model']} ({check['params'] / 1e6:.0f} M parameters) from {check['origin']}\n"
          f"Q: {check['prompt']}\nA: {check['reply']}\n"
          f"({check['new_tokens']} tokens at {check['tok_s']} tok/s, PyTorch eager)", flush=True)

    print("\n== 02 export to ONNX (without and with a KV cache) ==", flush=True)
    started = time.perf_counter()
    onnx_path = artifacts.ensure(loaded, "fp32")
    kv_path = artifacts.ensure(loaded, "kv-fp32")
    export_s = time.perf_counter() - started
    match = parity.check_parity(loaded.model, runtime.session(onnx_path), loaded.tokenizer)
    exported = {"path": str(onnx_path), "kv_path": str(kv_path), "export_s": round(export_s, 1),
                "bytes": onnx_graph.file_bytes(onnx_path),
                "max_abs_logit_diff": match.max_abs_logit_diff, "greedy_match": match.greedy_match}
    graph_summary = onnx_graph.describe(onnx_path)
    print(f"{graph_summary}\nready in {exported['export_s']} s; {match.summary()}", flush=True)

    print("\n== 03 INT8 static quantization ==", flush=True)
    int8_path = artifacts.ensure(loaded, "int8")
    artifacts.ensure(loaded, "kv-int8")
    quantized = quality.compare({"FP32": onnx_path, "INT8": int8_path}, loaded.tokenizer)
    print(quantized.to_string(), flush=True)

    print("\n== 04 chat with each graph ==", flush=True)
    transcripts = chat_samples(loaded)
    default_why, default_transcript = default_chat(loaded)

    print("\n== 05 benchmark ==", flush=True)
    bench = decode_bench.run(loaded, peers=peers, **({"lengths": tuple(lengths)} if lengths else {}))
    written = report.write_bench(bench, out_dir)

    report_md = out_dir / "report.md"
    report_md.write_text(
        "# On-device LLM lab report\n\n## 01 Environment\n\n```\n" + env.format_report(env_report)
        + "\n```\n\n## 01 Model check\n\n"
        + f"- model: `{check['model']}` ({check['params']:,} parameters), from `{check['origin']}`\n"
        + f"- Q: {check['prompt']}\n- A: {check['reply']}\n"
        + f"- {check['new_tokens']} new tokens at {check['tok_s']} tok/s (PyTorch eager, greedy)\n"
        + "\n## 02 Export to ONNX\n\n```\n" + graph_summary + "\n```\n\n"
        + f"- `{onnx_path}` (no cache) and `{kv_path}` (KV cache, runs in onnxruntime-genai)\n"
        + f"- parity: {match.summary()}\n"
        + "\n## 03 INT8 static quantization\n\n" + report.quant_table(quantized) + "\n\n"
        + "Held-out set; agreement: greedy tokens shared with FP32 before they first differ; "
        + f"{env.int8_kernel_note()}\n"
        + f"\n## 04 Chat\n\nSystem turn: \"{CHAT_SYSTEM}\" (`prompts.CHAT_SYSTEM`); greedy with the repetition "
        + "guard.\n\n" + "\n".join(f"### {label}\n\n{text}" for label, text in transcripts.items())
        + f"\n### The chat's default graph (`python -m labkit chat`)\n\n{default_why}.\n\n{default_transcript}"
        + "\n## 05 What each step bought\n\n![compression and tokens/s](bench.png)\n\n"
        + "Decode tokens/s after a prompt of N tokens:\n\n" + report.bench_table(bench) + "\n")
    (out_dir / "model_check.json").write_text(json.dumps(check, indent=1))
    (out_dir / "export.json").write_text(json.dumps(exported, indent=1))
    files = [report_md, *written] + [out_dir / f for f in ("env.json", "model_check.json", "export.json")]
    print("\nWrote " + "\n      ".join(map(str, files)))
    return report_md
