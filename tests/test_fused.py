"""The fused KV graph (fused.py) on the bundled model: what it is made of, that its cached
loop is exact in FP32, and its buffer; the tiny Qwen3 gets a clear refusal."""
import collections

import numpy as np
import onnx
import pytest
import torch

from labkit import artifacts, fused, generate, onnx_graph, quality, runtime

from labkit.bench import decode_bench, peers
from labkit.generate import SharedKVCache, WrongGraph, cached_loop, greedy_torch
from labkit.prompts import chat_ids

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def fused_fp32(default_model):
    return artifacts.ensure(default_model, "fused-fp32")


def test_a_layer_is_a_few_fused_kernels(fused_fp32, default_model):
    ops = collections.Counter(n.op_type for n in onnx.load(fused_fp32, load_external_data=False).graph.node)
    layers = default_model.model.config.num_hidden_layers
    assert ops["GroupQueryAttention"] == layers and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert ops["Concat"] == ops["Softmax"] == 0  # no cache copy, no attention spelled out
    logits = next(o for o in runtime.session(fused_fp32, 2).get_outputs() if o.name == "logits")
    assert logits.shape[1] == 1  # lm_head on the last position only (prune_lm_head)
    kinds = decode_bench.op_profile(fused_fp32, past=16, steps=2, threads=2)
    lab = decode_bench.op_profile(artifacts.ensure(default_model, "kv-fp32"), past=16, steps=2, threads=2)
    assert "GroupQueryAttention" in set(kinds["op"]) and "Concat" in set(lab["op"])
    assert kinds["kernels_per_step"].sum() * 5 < lab["kernels_per_step"].sum()
    assert kinds["share"].sum() == pytest.approx(1, abs=0.01)


def test_its_cached_loop_is_exact_in_fp32(fused_fp32, default_model):
    session = runtime.session(fused_fp32, 2)
    assert quality.cached_vs_recomputed(session, default_model.tokenizer, prompts=3, new_tokens=24) == [None] * 3
    ids = chat_ids(default_model.tokenizer, QUESTION)
    tokens = generate.generate(cached_loop(session), ids, max_new_tokens=12, stop=set()).tokens
    assert tokens == greedy_torch(default_model.model, torch.from_numpy(ids), 12)  # 16 of 16 measured
    with peers.genai_runner(fused_fp32.parent)() as run:  # the folder runs in onnxruntime-genai
        in_genai = run(ids, 7)[0]
    assert [int(t) for t in in_genai] == tokens[:7]


def test_the_shared_buffer_grows_and_keeps_what_it_held(fused_fp32, default_model):
    session = runtime.session(fused_fp32, 2)
    ids = chat_ids(default_model.tokenizer, QUESTION)
    small = SharedKVCache(session, capacity=8)  # the prompt alone outgrows it, and so do the steps
    grown = generate.generate(small, ids, max_new_tokens=20, stop=set()).tokens
    assert small.arrays[0].shape[2] >= ids.shape[1] + 19
    assert grown == generate.generate(SharedKVCache(session), ids, max_new_tokens=20, stop=set()).tokens


def test_each_cached_loop_refuses_the_others_graph(fused_fp32, default_model):
    fused_session = runtime.session(fused_fp32, 2)
    kv_session = runtime.session(artifacts.ensure(default_model, "kv-fp32"), 2)
    assert isinstance(cached_loop(fused_session), SharedKVCache)
    assert isinstance(cached_loop(kv_session), generate.KVCache)
    with pytest.raises(WrongGraph, match="not a fused KV graph"):
        SharedKVCache(kv_session)


def test_a_model_gqa_cannot_run_gets_a_clear_refusal(tiny, tmp_path):
    assert "multiple of 16" in fused.unsupported(tiny.model.config)
    with pytest.raises(fused.BuilderFailed, match="multiple of 16"):
        fused.build(tiny, "fused-fp32", tmp_path)
    assert fused.unsupported(type(tiny.model.config)(**{**tiny.model.config.to_dict(), "head_dim": 64})) is None


def test_a_half_written_fused_graph_is_rebuilt(default_model, fused_fp32):
    graph = onnx.load(fused_fp32, load_external_data=False)
    del graph.metadata_props[:]  # the stamp is written last: without it, the build did not finish
    onnx.save(graph, fused_fp32)
    assert not artifacts.is_valid(default_model, "fused-fp32")
    assert artifacts.ensure(default_model, "fused-fp32") == fused_fp32 and artifacts.is_valid(default_model, "fused-fp32")
    assert np.isfinite(generate.SharedKVCache(runtime.session(fused_fp32, 2)).start(
        chat_ids(default_model.tokenizer, QUESTION))).all()


def test_the_int8_graph_looks_up_the_embedding_in_lm_heads_8_bit_weight(default_model):
    """The builder keeps a float embedding beside an 8-bit lm_head (113 MB of 267); fused.py
    makes the lookup read lm_head's blocks. Near-lossless: Q8_0's arithmetic, blocks of 64."""
    int8 = artifacts.ensure(default_model, "fused-int8")
    graph = onnx.load(int8, load_external_data=False)
    lookup = next(n for n in graph.graph.node if n.op_type == "GatherBlockQuantized")
    assert {a.name: a.i for a in lookup.attribute}["bits"] == 8
    hidden = default_model.model.config.hidden_size
    assert not [t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims[-1:] == [hidden]
                and t.dims[0] > 10_000]  # no float [vocab, hidden] matrix left
    assert onnx_graph.file_bytes(int8) < 0.3 * onnx_graph.file_bytes(artifacts.ensure(default_model, "fp32"))
    fp32 = quality.heldout_perplexities(quality.torch_logits(default_model.model), default_model.tokenizer)
    got = quality.heldout_perplexities(quality.session_logits(runtime.session(int8, 2)), default_model.tokenizer)
    assert all(abs(got[lang] / fp32[lang] - 1) < 0.02 for lang in fp32), (got, fp32)  # -0.9% / +0.2% measured


def test_the_benchmark_compares_the_fused_graphs_with_their_peers(default_model):
    """`bench`'s engines on the bundled model: the fused rows, then onnxruntime-genai's own loop
    on the same fused folders and llama.cpp on Q8_0 and Q4_1; each peer runs."""
    logged = []
    rows = decode_bench.engines(default_model, 2, log=logged.append, peers=True)
    configs = [(r.engine, r.precision) for r in rows]
    assert configs[-7:] == [("onnxruntime-fused", "fp32"), ("onnxruntime-fused", "int8"), ("onnxruntime-fused", "int4"),
                            ("onnxruntime-genai", "int8"), ("onnxruntime-genai", "int4"),
                            ("llama.cpp", "q8_0"), ("llama.cpp", "q4_1")], logged
    ids = chat_ids(default_model.tokenizer, QUESTION)
    fused_int8 = next(r for r in rows if r.engine == "onnxruntime-fused" and r.precision == "int8")
    in_genai = next(r for r in rows if r.engine == "onnxruntime-genai" and r.precision == "int8")
    with in_genai.open() as run:  # a child process of its own, stopped here
        assert [int(t) for t in run(ids, 6)[0]] == fused_int8.open()(ids, 6)[0]
    for row in rows[-2:]:
        with row.open() as run:
            tokens, ttft, total = run(ids, 4)
        assert len(tokens) == 4 and 0 < ttft < total and "AMX" not in run.build


def test_the_terminal_chat_talks_through_a_fused_graph(default_model, monkeypatch, capsys):
    from labkit import chat
    from labkit.__main__ import main

    from labkit.prompts import CHAT_SYSTEM

    lines, terminal, systems = iter([QUESTION, "/quit", "/quit"]), chat.run_terminal, []

    def run(conversation):
        systems.append(conversation.system)
        terminal(conversation, read=lambda _: next(lines))

    monkeypatch.setattr(chat, "run_terminal", run)
    assert main(["chat", "--graph", "fused-fp32", "--max-tokens", "12"]) == 0
    assert "Paris" in capsys.readouterr().out  # FP32's answer, as PyTorch gives it
    assert main(["chat", "--graph", "fused-fp32", "--system", ""]) == 0
    assert systems == [CHAT_SYSTEM, None]


@pytest.mark.parametrize("tied", [True, False])
def test_the_int8_lookup_shares_lm_head_only_where_the_model_ties_them(tied, tmp_path, monkeypatch):
    """A tiny Qwen3 GroupQueryAttention can run (head size 16): tied, the lookup reads
    lm_head's 8-bit weight; untied, it keeps the model's own embedding. Either way the
    graph's logits follow PyTorch's. Blocks of 32, the tiny model's hidden size: its rows
    are then whole blocks (with the default 64 they are padded, as the next test shows)."""
    from labkit import models

    monkeypatch.setitem(fused.PRECISIONS, "fused-int8", ("int8", ["accuracy_level=4", "block_size=32"]))
    shape = dict(models.QWEN3_TINY_SHAPE, head_dim=16, tie_word_embeddings=tied)
    loaded = models._random_qwen3(f"qwen3-tiny-{'tied' if tied else 'untied'}", shape)
    assert loaded.model.config.tie_word_embeddings is tied
    graph_file = fused.build(loaded, "fused-int8", tmp_path)
    lookup = [n.op_type for n in onnx.load(graph_file, load_external_data=False).graph.node
              if n.name.startswith("/model/embed_tokens/Gather")]
    assert lookup == (["GatherBlockQuantized"] if tied else ["Gather"])
    ids = chat_ids(loaded.tokenizer, QUESTION)
    got = quality.session_logits(runtime.session(graph_file, 2))(ids)[0]
    want = loaded.model(torch.from_numpy(ids)).logits[0].detach().numpy()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_a_padded_last_block_keeps_the_float_lookup(tmp_path):
    """The default blocks of 64 over a hidden size of 32: lm_head's rows are padded, so they
    are not the embedding's rows and the lookup must stay the model's own."""
    from labkit import models

    loaded = models._random_qwen3("qwen3-tiny-tied", dict(models.QWEN3_TINY_SHAPE, head_dim=16))
    assert loaded.model.config.hidden_size % 64
    graph_file = fused.build(loaded, "fused-int8", tmp_path)
    lookup = [n.op_type for n in onnx.load(graph_file, load_external_data=False).graph.node
              if n.name.startswith("/model/embed_tokens/Gather")]
    assert lookup == ["Gather"]
    ids = chat_ids(loaded.tokenizer, QUESTION)
    assert np.isfinite(quality.session_logits(runtime.session(graph_file, 2))(ids)).all()
