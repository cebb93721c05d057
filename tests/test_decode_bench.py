import os
import time

import onnx
import pytest
import torch

from labkit import artifacts, attention, charts, checks, decode_bench, peers
from labkit.benchmarks import bench_decode
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

    monkeypatch.setattr(decode_bench, "_measure", measure)
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
    with pytest.raises(AssertionError, match="cached loop took"):
        checks.faster(lambda: time.sleep(0.02), lambda: None)


def test_the_lab_chats_with_every_graph(bench, tiny):
    from labkit import lab

    transcripts = lab.chat_samples(tiny, messages=("Hi",), max_new_tokens=4)
    assert list(transcripts) == list(lab.GRAPHS)
    for text in transcripts.values():
        assert "**你 You**: Hi" in text and "tokens/s" in text and "notice" not in text


def test_the_report_tables_read_like_the_readme(bench):
    from labkit import report

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
    dot products may part later), and a second run starts from an empty cache."""
    from labkit.generate import greedy_torch
    from labkit.gguf_convert import bundled_gguf
    from labkit.prompts import chat_ids

    ids = chat_ids(default_model.tokenizer, "How many days are there in a week?")
    run = peers.llama_cpp_runner(bundled_gguf(), threads=2)()
    tokens, ttft, total = run(ids, 12)
    assert tokens[:8] == greedy_torch(default_model.model, torch.from_numpy(ids), 8)
    assert len(tokens) == 12 and 0 < ttft < total
    assert run(ids, 12)[0] == tokens


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
    tokens, ttft, total = peers.llama_cpp_runner(q8, threads=2)()(chat_ids(default_model.tokenizer, "Hi"), 6)
    assert len(tokens) == 6 and 0 < ttft < total


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
