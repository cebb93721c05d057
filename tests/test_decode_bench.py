import os
import time

import onnx
import pytest
import torch

from labkit import artifacts, attention, charts, checks

from labkit.bench import decode_bench, peers
from labkit.bench.benchmarks import bench_decode
from labkit.prompts import chat_ids

CONTRACT = {"engine", "precision", "cache", "bytes", "ratio", "ttft_s", "prompt_len", "tok_s", "peak_rss_gb",
            "agreement"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A private artifacts directory for this module's graphs."""
    folder = tmp_path_factory.mktemp("artifacts")
    old = os.environ.get("LABKIT_ARTIFACTS")
    os.environ["LABKIT_ARTIFACTS"] = str(folder)
    yield folder
    if old is None:
        del os.environ["LABKIT_ARTIFACTS"]
    else:
        os.environ["LABKIT_ARTIFACTS"] = old


@pytest.fixture(scope="module")
def bench(workspace, tiny):
    return decode_bench.run(tiny, lengths=(16,), peers=False, log=lambda _: None)


def test_bench_rows_cover_every_engine(bench):
    assert CONTRACT <= set(bench.columns)
    configs = list(zip(bench["engine"], bench["precision"], bench["cache"]))
    assert configs == [("pytorch", "fp32", False), ("pytorch", "fp32", True), ("onnxruntime", "fp32", False),
                       ("onnxruntime", "fp32", True), ("onnxruntime", "int8", False), ("onnxruntime", "int8", True),
                       ("onnxruntime", "int4", True)]
    fp32 = bench[bench["precision"] == "fp32"]
    assert (fp32["agreement"] == 1.0).all()  # every float engine picks PyTorch's tokens
    assert fp32["ppl_en"].nunique() == 1 or fp32["ppl_en"].max() / fp32["ppl_en"].min() < 1 + 1e-4
    assert (bench.loc[bench["precision"] == "int8", "ratio"] < 0.5).all()
    assert (bench["tok_s"] > 0).all() and (bench["ttft_s"] > 0).all() and (bench["peak_rss_gb"] > 0).all()


def test_the_chart_and_its_summary(bench):
    summary = bench[["engine", "precision", "cache", "tok_s"]].copy()
    summary.insert(3, "compression", 1 / bench["ratio"])
    checks.summary_frame(summary, bench)
    with pytest.raises(AssertionError, match="compression"):
        checks.summary_frame(summary.assign(compression=bench["ratio"]), bench)
    with pytest.raises(AssertionError, match="one row per bench row"):
        checks.summary_frame(summary.head(3), bench)
    figure = charts.deployment_summary(bench, prompt_len=16)
    assert [len(ax.patches) for ax in figure.axes] == [len(bench)] * 2


def test_a_saved_bench_is_reused_only_when_asked(bench, tiny, monkeypatch):
    def measure(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(decode_bench, "measure", measure)
    log = []
    again = decode_bench.run(tiny, lengths=(16,), peers=False, log=log.append, reuse=True)
    assert again[sorted(CONTRACT)].equals(bench[sorted(CONTRACT)]) and "reusing" in log[0]
    with pytest.raises(AssertionError, match="measured again"):
        decode_bench.run(tiny, lengths=(16,), peers=False, log=log.append)
    with pytest.raises(AssertionError, match="measured again"):  # other lengths: nothing saved
        decode_bench.run(tiny, lengths=(8,), peers=False, log=log.append, reuse=True)


def test_artifacts_are_reused_until_their_source_changes(bench, tiny):
    log = []
    artifacts.ensure(tiny, "kv-int4", log.append)
    assert log == [f"kv-int4: reusing {artifacts.path(tiny, 'kv-int4')}"]
    source = artifacts.path(tiny, "kv-fp32")
    later = time.time() + 10
    os.utime(source, (later, later))
    assert not artifacts.is_valid(tiny, "kv-int4")
    assert artifacts.is_valid(tiny, "kv-fp32")


def test_a_kv_graph_exported_with_transformers_attention_is_rebuilt(bench, tiny):
    path = artifacts.path(tiny, "kv-fp32")
    assert artifacts.is_valid(tiny, "kv-fp32")
    original, stat = path.read_bytes(), path.stat()
    graph = onnx.load(str(path), load_external_data=False)
    stamps = [p for p in graph.metadata_props if p.key == attention.METADATA_KEY]
    assert [p.value for p in stamps] == [attention.NAME]
    graph.metadata_props.remove(stamps[0])
    try:
        onnx.save(graph, str(path))
        assert not artifacts.is_valid(tiny, "kv-fp32")
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_bench_writes_csv_png_and_json(bench, tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(decode_bench, "run", lambda loaded: bench)
    monkeypatch.setattr("labkit.models.load", lambda name: tiny)
    rows = bench_decode("qwen3-tiny", tmp_path / "bench.json", tmp_path)
    assert (tmp_path / "bench.csv").is_file() and (tmp_path / "bench.png").stat().st_size > 10_000
    assert len(rows) == len(bench) and CONTRACT <= set(rows[0])


def test_faster_compares_side_by_side():
    assert checks.faster(lambda: None, lambda: time.sleep(0.02)) > 1
    with pytest.raises(AssertionError, match="as fast as recomputing"):
        checks.faster(lambda: time.sleep(0.02), lambda: None)
    with pytest.raises(AssertionError, match="at least 3x"):
        checks.faster(lambda: time.sleep(0.02), lambda: time.sleep(0.04), at_least=3)


def test_the_lab_chats_with_every_graph(bench, tiny):
    from labkit.bench import lab

    transcripts = lab.chat_samples(tiny, messages=("Hi",), max_new_tokens=4)
    assert list(transcripts) == list(lab.GRAPHS)
    for text in transcripts.values():
        assert "**你 You**: Hi" in text and "tokens/s" in text and "notice" not in text


def test_the_report_tables_read_like_the_readme(bench):
    from labkit.bench import report

    table = report.bench_table(bench)
    lines = table.splitlines()
    assert lines[0] == "| engine | size | 16 |" and len(lines) == 2 + len(bench)
    assert "| ORT INT8, KV cache | " in table and "| PyTorch FP32, no cache | " in table
    row = bench[(bench["precision"] == "int8") & bench["cache"]].iloc[0]
    assert f"| {row['bytes'] / 1e6:,.1f} MB | {row['tok_s']:.2f} |" in table


def test_io_binding_gain_measures_both_ways(bench, tiny):
    gain = decode_bench.io_binding_gain(artifacts.path(tiny, "kv-int8"), tiny.tokenizer, prompt_len=16)
    assert set(gain) == {"numpy_feeds_tok_s", "io_binding_tok_s"} and min(gain.values()) > 0


@pytest.mark.slow
def test_the_llama_cpp_peer_runs_the_bundled_gguf(default_model):
    """The peer row measures the same model: llama.cpp on the GGUF and PyTorch on its float32
    conversion pick the same greedy tokens (16 of 16 measured on this prompt; Q4_1 x Q8
    dot products may part later), and a second run starts from an empty cache. It runs in a
    child process, built for this CPU's instruction sets and without AMX."""
    from labkit.env import cpu_flags
    from labkit.generate import greedy_torch
    from labkit.gguf_convert import bundled_gguf
    from labkit.prompts import chat_ids

    ids = chat_ids(default_model.tokenizer, "How many days are there in a week?")
    with peers.llama_cpp_runner(bundled_gguf(), threads=2)() as run:
        tokens, ttft, total = run(ids, 12)
        assert tokens[:8] == greedy_torch(default_model.model, torch.from_numpy(ids), 8)
        assert len(tokens) == 12 and 0 < ttft < total
        assert run(ids, 12)[0] == tokens
    compiled = run.build.split(": ")[1].split()
    assert ("AVX2" in compiled) == ("avx2" in cpu_flags()) and ("AVX512" in compiled) == ("avx512f" in cpu_flags())
    assert not any(feature.startswith("AMX") for feature in compiled)
    assert run.peak_rss_bytes > 0 and run._process.exitcode == 0  # asked to stop, it stopped


@pytest.mark.slow
def test_the_q8_0_peer_is_quantized_once_from_the_bundled_gguf(default_model):
    """llama.cpp's own quantizer makes Q8_0 from the Q4_1 file (8.5 bits a weight against
    Q4_1's 5.7) once; the peer runs it like the bundled file."""
    from labkit.gguf_convert import bundled_gguf
    from labkit.prompts import chat_ids

    q8 = peers.q8_0_gguf()
    made = q8.stat().st_mtime_ns
    assert 1.3 < q8.stat().st_size / bundled_gguf().stat().st_size < 1.6
    assert peers.q8_0_gguf() == q8 and q8.stat().st_mtime_ns == made  # kept, not quantized again
    with peers.llama_cpp_runner(q8, threads=2)() as run:
        tokens, ttft, total = run(chat_ids(default_model.tokenizer, "Hi"), 6)
    assert len(tokens) == 6 and 0 < ttft < total


def test_the_llama_cpp_build_names_this_cpus_instruction_sets_and_never_amx():
    from labkit.bench import llama_build

    sapphire_rapids = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512cd",
                       "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16",
                       "amx_tile", "amx_int8", "amx_bf16"}
    haswell = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
    on = lambda args: {a[2:-3] for a in args if a.endswith("=ON")}  # noqa: E731
    xeon, avx2_only = llama_build.cmake_args(sapphire_rapids), llama_build.cmake_args(haswell)
    assert "-DGGML_NATIVE=OFF" in xeon and "-DGGML_NATIVE=OFF" in avx2_only  # native would compile AMX in
    assert on(xeon) == set(llama_build.GGML_ISA) and {"-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF"} <= set(xeon)
    assert on(avx2_only) == {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"}
    assert on(llama_build.cmake_args(haswell | {"avx512f"})) == on(avx2_only)  # ggml's AVX512 needs F, CD, VL, DQ, BW
    key = lambda args: llama_build.build_key("llama-cpp-python==0.3.36", args)  # noqa: E731
    assert key(xeon) != key(avx2_only) and key(xeon) == key(llama_build.cmake_args(set(sapphire_rapids)))
    assert peers.compiled_features("CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 0 | REPACK = 1 | ") == "SSE3 AVX2 REPACK"


def test_a_peer_that_crashes_hangs_or_is_missing_costs_its_own_row_only(bench, tiny):
    """A peer in a child that segfaults (as llama.cpp did on a Sapphire Rapids Xeon), one that
    hangs and one whose package is missing: each becomes rows that say so, in the table, the
    report and the chart; the lab's own rows are measured as without them; no child is left."""
    import multiprocessing

    import peer_doubles
    from labkit.bench import report
    from labkit.bench.peer_process import PeerProcess

    def peer(name, opener, args=(), timeout_s=60.0):
        return decode_bench.Engine(name, "int8", True, 1000, lambda: PeerProcess(name, opener, args, timeout_s))

    ours = decode_bench.engines(tiny, 2, log=lambda _: None, peers=False)
    table = [ours[0], ours[5], peer("segfaulting", peer_doubles.segfaulting),
             peer("hanging", peer_doubles.hanging, timeout_s=3), peer("missing", peer_doubles.not_installed),
             peer("working", peer_doubles.counting, ([7] * 32,))]
    log = []
    measured = decode_bench.measure(tiny, table, lengths=(16,), threads=2, log=log.append)
    status = dict(zip(measured["engine"], measured["status"]))
    assert status == {"pytorch": "ok", "onnxruntime": "ok", "segfaulting": "crashed (SIGSEGV) in a run",
                      "hanging": "timed out after 3 s in a run",
                      "missing": "failed in opening: ModuleNotFoundError: No module named 'labkit_no_such_engine'",
                      "working": "ok"}
    assert any("segfaulting int8: crashed (SIGSEGV)" in line for line in log)
    mine = measured.set_index("engine").loc[["pytorch", "onnxruntime"]]
    alone = bench.iloc[[0, 5]].set_index("engine")
    assert mine["agreement"].tolist() == alone["agreement"].tolist() and (mine["tok_s"] > 0).all()
    working = measured.set_index("engine").loc["working"]
    assert working["build"] == "counting double" and working["tok_s"] > 0
    assert 0 < working["peak_rss_gb"] < 0.5  # the child's own memory, not this process's
    failed = measured[measured["status"].str.startswith(("crashed", "timed", "failed"))]
    assert failed["tok_s"].isna().all() and (failed["cpu"] == measured["cpu"].iloc[0]).all()
    assert multiprocessing.active_children() == []

    markdown = report.bench_table(measured)
    assert "| segfaulting INT8, KV cache | 0.0 MB | crashed (SIGSEGV) in a run |" in markdown
    figure = charts.deployment_summary(measured, prompt_len=16)
    notes = [text.get_text() for text in figure.axes[1].texts if text.get_color() == "tab:red"]
    assert notes == ["crashed (SIGSEGV) in a run", "timed out after 3 s in a run", status["missing"]]


def test_no_cache_rows_check_a_guess_of_their_answer_in_one_pass(bench, tiny):
    """The agreement runs of the rows without a cache: a guess (greedy_eager's, greedy_ort's)
    right, wrong or empty, the tokens are the row's own loop's."""
    ids = chat_ids(tiny.tokenizer, "What is the capital of France?")
    checked = []
    for row in decode_bench.engines(tiny, 2, log=lambda _: None, peers=False):
        run = row.open()
        if row.cache:
            assert not hasattr(run, "answer"), row
            continue
        loop = run(ids, 12)[0]
        wrong = loop[:3] + [(t + 1) % tiny.model.config.vocab_size for t in loop[3:]]
        assert run.answer(ids, 12, loop) == run.answer(ids, 12, wrong) == run.answer(ids, 12, []) == loop
        checked.append((row.engine, row.precision))
    assert checked == [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def test_the_chat_graph_rule_puts_quality_before_speed():
    """chat_graph.choose: no worse than kv-int8 on both perplexities and on answers, then the
    fastest; a faster graph that answers fewer questions, or whose perplexity is higher by
    more than the margin, is left out and named."""
    import pandas as pd

    from labkit import chat_graph

    def row(graph, ppl_en, ppl_zh, correct, tok_s):
        return {"graph": graph, "ppl_en": ppl_en, "ppl_zh": ppl_zh, "correct": correct, "questions": 6,
                "tok_s": tok_s}

    base = row("kv-int8", 26.86, 13.48, 4, 58.7)
    table = pd.DataFrame([row("kv-fp32", 24.49, 12.76, 5, 40.0), base, row("fused-int8", 24.28, 12.79, 5, 93.3),
                          row("fused-int4", 28.3, 13.0, 6, 120.0), row("fused-fp32", 24.49, 12.76, 5, 45.0)])
    graph, why = chat_graph.choose(table)
    assert graph == "fused-int8" and "left out on quality: fused-int4" in why and "93.3 tok/s" in why
    within_margin = table.assign(ppl_en=table["ppl_en"].where(table["graph"] != "fused-int4", 26.86 * 1.049))
    assert chat_graph.choose(within_margin)[0] == "fused-int4"
    fewer_answers = table.assign(correct=table["correct"].where(~table["graph"].str.startswith("fused"), 3))
    assert chat_graph.choose(fewer_answers)[0] == "kv-int8"  # kv-fp32 is as good but slower


def test_the_chat_graph_is_measured_once_until_a_graph_changes(bench, tiny):
    """Every candidate on the held-out prompts in one conversation; the measurement is reused
    until one of its graphs is rebuilt."""
    from labkit import chat_graph

    log = []
    table = chat_graph.measure(tiny, threads=2, log=log.append)
    from labkit import fused

    assert fused.unsupported(tiny.model.config)  # head size 8: no fused candidates for this model
    assert list(table["graph"]) == chat_graph.candidates(tiny) == ["kv-fp32", "kv-int8"]
    assert (table["questions"] == 6).all() and (table["tok_s"] > 0).all()
    assert all(len(replies) == 8 for replies in table["replies"])
    kv_fp32 = table.set_index("graph").loc["kv-fp32"]
    assert kv_fp32["ppl_en"] == pytest.approx(bench.loc[bench["precision"].eq("fp32") & bench["cache"], "ppl_en"].iloc[0],
                                              rel=1e-3)  # the benchmark's perplexity of the same graph
    assert chat_graph.measure(tiny, threads=2, log=log.append)["replies"].tolist() == table["replies"].tolist()
    assert "reusing" in log[-1]
    graph = artifacts.path(tiny, "kv-int8")
    later = time.time() + 20
    os.utime(graph, (later, later))
    chat_graph.measure(tiny, threads=2, log=log.append)
    assert "measuring" in log[-len(table) - 1]
