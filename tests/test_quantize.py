"""Quantization on the tiny Qwen3: the static INT8 pipeline and its parts, the
comparison quantizers, the sensitivity scan, the decode-step reader, bad input."""
import copy
import json

import numpy as np
import onnx
import pytest
import torch

from labkit import calibration, export_kv, onnx_graph, onnx_weights, prompts, quantize, runtime, sensitivity, smoothquant

PROMPTS = prompts.calibration_prompts()[:8]


def logits(path, ids):
    return runtime.session(path).run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


@pytest.fixture(scope="module")
def ids(tiny):
    return calibration.PromptReader(tiny.tokenizer, ["A prompt the calibration never saw."]).feeds[0]["input_ids"]


@pytest.fixture(scope="module")
def int8(tmp_path_factory, tiny, tiny_onnx):
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS)
    recipe = quantize.Recipe(weight_only=("model.layers.1.mlp.down_proj",))
    return quantize.quantize_int8_static(tiny_onnx, tmp_path_factory.mktemp("q") / "int8", reader, recipe)


def test_static_int8_is_small_checked_and_close_to_float(int8, tiny, tiny_onnx, ids):
    onnx.checker.check_model(str(int8))
    ops = onnx_graph.op_histogram(int8)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    # Every matrix (linears and the tied embedding) is stored once, in int8.
    matrices = sum(p.numel() for p in tiny.model.parameters() if p.ndim == 2)
    assert quantize.int8_weight_bytes(int8) == matrices
    assert onnx_graph.file_bytes(int8) / onnx_graph.file_bytes(tiny_onnx) < 0.4
    ref, out = logits(tiny_onnx, ids), logits(int8, ids)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05
    recipe = json.loads(next(p.value for p in onnx_graph.load_graph(int8).metadata_props if p.key == "labkit.recipe"))
    assert recipe["weight_only"] == ["model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize("weight_type", ["s8", "u8"])
def test_embedding_lookup_reads_the_int8_lm_head_weight(tmp_path, tiny, tiny_onnx, ids, weight_type):
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS)
    int8 = quantize.quantize_int8_static(tiny_onnx, tmp_path / "int8", reader, quantize.Recipe(weight_type=weight_type))
    graph = onnx_graph.load_graph(int8)
    weights = onnx_weights.initializers(graph)
    floats = [t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and 49152 in t.dims]
    assert floats == ["lm_head.weight_scale"]  # no float copy of the [vocab, hidden] matrix is left
    table = onnx_weights.read(weights["lm_head.weight_quantized"], int8.parent).astype(np.float32)
    zero_point = onnx_weights.read(weights["lm_head.weight_zero_point"], int8.parent).astype(np.float32)
    assert (zero_point != 0).any() == (weight_type == "u8")  # u8 weights are asymmetric
    table = (table - zero_point) * onnx_weights.read(weights["lm_head.weight_scale"], int8.parent)
    gather = next(n for n in graph.graph.node if n.name == "model.embed_tokens/Transpose")
    session = runtime.observing_session(int8, [gather.output[0]])
    looked_up = session.run([gather.output[0]], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    np.testing.assert_allclose(looked_up[0], table[:, ids[0]].T, rtol=1e-6)


def test_lm_head_may_be_weight_only_and_still_shared(tmp_path, tiny, tiny_onnx, ids):
    """weight_only=("lm_head",): lm_head reads int8 weights with float activations, and the
    embedding lookup reads the same int8 matrix (the weight-only quantizer's, not ORT's)."""
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS)
    int8 = quantize.quantize_int8_static(tiny_onnx, tmp_path / "int8", reader, quantize.Recipe(weight_only=("lm_head",)))
    graph = onnx_graph.load_graph(int8).graph
    producer = {o: n for n in graph.node for o in n.output}
    lm_head = next(n for n in graph.node if n.name == "lm_head/MatMul")
    assert producer[lm_head.input[1]].op_type == "DequantizeLinear"
    assert producer[lm_head.input[0]].op_type != "DequantizeLinear"
    gather = next(n for n in graph.node if n.name == "model.embed_tokens/Gather")
    assert gather.input[0] == producer[lm_head.input[1]].input[0] == "lm_head.weight_quantized"
    ref, out = logits(tiny_onnx, ids), logits(int8, ids)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_lm_head_may_quantize_its_input_with_a_scale_of_each_call(tmp_path, tiny, tiny_onnx, int8):
    """Recipe(dynamic_head=True): lm_head's input goes through DynamicQuantizeLinear (the
    calibrated scale and zero point are gone from the graph), and on inputs the calibration
    never saw the logits stay at least as close to float as with the calibrated scale (the
    `int8` fixture, the default)."""
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS)
    per_call = quantize.quantize_int8_static(tiny_onnx, tmp_path / "per_call", reader,
                                             quantize.Recipe(weight_only=("model.layers.1.mlp.down_proj",),
                                                             dynamic_head=True))
    graph = onnx_graph.load_graph(per_call).graph
    producer = onnx_graph.producers(graph)
    lm_head = next(n for n in graph.node if n.output[0] == "logits")
    dequantize = producer[lm_head.input[0]]
    assert dequantize.op_type == "DequantizeLinear"
    assert producer[dequantize.input[0]].op_type == "DynamicQuantizeLinear"
    used = {name for n in graph.node for name in n.input}
    assert all(t.name in used for t in graph.initializer)
    calibrated = onnx_graph.load_graph(int8).graph
    assert "DynamicQuantizeLinear" not in {n.op_type for n in calibrated.node}

    unseen = calibration.PromptReader(tiny.tokenizer, prompts.calibration_prompts()[-6:]).feeds

    def error(path):
        session, exact = runtime.session(path), runtime.session(tiny_onnx)
        return np.mean([np.abs(session.run(["logits"], f)[0] - exact.run(["logits"], f)[0]).mean() for f in unseen])

    assert error(per_call) <= error(int8)


OLDER_RECIPES = {  # variant: the edits that turn its graph's recipe into an older one
    "int8": {"a field missing": lambda recipe: {k: v for k, v in recipe.items() if k != "dynamic_head"}},
    "kv-int8": {"calibrated lm_head": lambda recipe: {**recipe, "dynamic_head": False},
                "a static down_proj": lambda recipe: {**recipe, "weight_only": [
                    n for n in recipe["weight_only"] if n != "model.layers.0.mlp.down_proj"]}}}


@pytest.mark.parametrize("variant", OLDER_RECIPES)
def test_a_graph_of_an_older_recipe_is_rebuilt(variant, tiny, monkeypatch, tmp_path):
    """A static INT8 graph whose recipe lacks one of today's choices is not reused, nor a
    KV graph built without lm_head's per-call scale or with a down_proj static
    (quantize.lab_recipe). Each older recipe is refused, today's accepted again; the
    graph is rebuilt once, from the last of them (a rebuild does not depend on why)."""
    from labkit import artifacts, paths

    monkeypatch.setenv(paths.ARTIFACTS_ENV, str(tmp_path))
    built = artifacts.ensure(tiny, variant)
    assert artifacts.is_valid(tiny, variant)
    graph = onnx.load(built, load_external_data=False)
    entry = next(p for p in graph.metadata_props if p.key == quantize.RECIPE_KEY)
    today = json.loads(entry.value)
    assert today["dynamic_head"] == (variant == "kv-int8")
    if variant == "kv-int8":
        assert {f"model.layers.{i}.mlp.down_proj" for i in range(tiny.model.config.num_hidden_layers)} \
            <= set(today["weight_only"])
    for older, edit in OLDER_RECIPES[variant].items():
        entry.value = json.dumps(edit(today))
        onnx.save(graph, built)
        assert not artifacts.is_valid(tiny, variant), older
    artifacts.ensure(tiny, variant)
    assert artifacts.is_valid(tiny, variant)
    assert quantize.recipe_of(onnx.load(built, load_external_data=False)) == today


def test_weight_only_layer_keeps_float_activations(int8):
    graph = onnx_graph.load_graph(int8).graph
    producer = {o: n for n in graph.node for o in n.output}
    weight_only = next(n for n in graph.node if n.name == "model.layers.1.mlp.down_proj/MatMul")
    static = next(n for n in graph.node if n.name == "model.layers.0.mlp.down_proj/MatMul")
    assert producer[weight_only.input[1]].op_type == "DequantizeLinear"
    assert producer[weight_only.input[0]].op_type != "DequantizeLinear"
    assert producer[static.input[0]].op_type == "DequantizeLinear"


def test_smoothquant_leaves_the_float_model_unchanged(tmp_path, tiny, tiny_onnx, ids):
    graph = onnx_graph.load_graph(tiny_onnx)
    matmuls = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1].endswith(".weight")]
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS)
    ranges = calibration.channel_ranges(tiny_onnx, reader, sorted({n.input[0] for n in matmuls}))
    factors, smoothed = smoothquant.smooth(graph, tiny_onnx.parent, ranges, alpha=0.5)
    assert len(factors) == 2 * (2 + 3 + 2 + 1)  # per layer: 2 norms, q/k/v, gate/up, down; up_proj twice
    onnx_weights.save(graph, tiny_onnx.parent, tmp_path / "model.onnx", replace=smoothquant.apply(factors))
    np.testing.assert_allclose(logits(tmp_path / "model.onnx", ids), logits(tiny_onnx, ids), atol=1e-4)
    down = next(n.input[0] for n in matmuls if n.name == "model.layers.0.mlp.down_proj/MatMul")
    assert np.abs(smoothed[down]).max() != pytest.approx(np.abs(ranges[down]).max())


def test_channel_ranges_match_pytorch(tiny, tiny_onnx):
    graph = onnx_graph.load_graph(tiny_onnx).graph
    lm_head_input = next(n.input[0] for n in graph.node if n.name == "lm_head/MatMul")
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS)
    low, high = calibration.channel_ranges(tiny_onnx, reader, [lm_head_input])[lm_head_input]
    seen = []
    handle = tiny.model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0][0]))
    with torch.no_grad():
        for feed in reader.feeds:
            tiny.model(input_ids=torch.from_numpy(feed["input_ids"]), use_cache=False)
    handle.remove()
    every = torch.cat(seen).numpy()
    np.testing.assert_allclose(low, every.min(0), atol=1e-4)
    np.testing.assert_allclose(high, every.max(0), atol=1e-4)


def test_dynamic_and_int4_comparisons(tmp_path, tiny_onnx, ids):
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    dynamic = quantize.quantize_int8_dynamic(tiny_onnx, tmp_path / "dynamic")
    int4 = quantize.quantize_int4_weight_only(tiny_onnx, tmp_path / "int4")
    assert (root.handlers, root.level) == (handlers, level)  # ORT's basicConfig(INFO) did not stick
    assert onnx_graph.op_histogram(dynamic)["DynamicQuantizeLinear"] > 0
    assert onnx_graph.op_histogram(int4)["MatMulNBits"] > 0
    assert onnx_graph.op_histogram(int4)["GatherBlockQuantized"] == 1
    assert onnx_graph.file_bytes(int4) < 0.4 * onnx_graph.file_bytes(tiny_onnx)  # two 4-bit embedding copies
    ref = logits(tiny_onnx, ids)
    for path, tolerance in ((dynamic, 0.1), (int4, 0.25)):  # 16 levels per weight instead of 256
        assert np.linalg.norm(logits(path, ids) - ref) / np.linalg.norm(ref) < tolerance


def test_scan_finds_a_planted_outlier(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_ARTIFACTS", str(tmp_path))
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():  # the same function, but channel 5 of layer 1's down_proj input is 1000x larger
        model.model.layers[1].mlp.up_proj.weight[5] *= 1000
        model.model.layers[1].mlp.down_proj.weight[:, 5] /= 1000
    feeds = calibration.PromptReader(tiny.tokenizer, PROMPTS).feeds
    table = sensitivity.scan(model, feeds, eval_feeds=2)
    assert list(table["layer"]) == ["model.layers.1.mlp.down_proj", "model.layers.0.mlp.down_proj"]
    assert table["kl"][0] > 10 * table["kl"][1]
    assert sensitivity.most_sensitive(table, 0.9) == ("model.layers.1.mlp.down_proj",)

    def no_rescan(*args):
        raise AssertionError("the same weights and feeds were scanned again")

    monkeypatch.setattr(sensitivity, "_scan", no_rescan)
    assert sensitivity.scan(model, feeds, eval_feeds=2).equals(table)  # kept on disk
    with pytest.raises(AssertionError, match="scanned again"):  # other weights: a new scan
        sensitivity.scan(tiny.model, feeds, eval_feeds=2)
    with pytest.raises(AssertionError, match="scanned again"):  # other feeds: a new scan
        sensitivity.scan(model, feeds[:-1], eval_feeds=2)


def test_kv_reader_records_decode_steps_from_the_float_model(tiny):
    reader = calibration.KVCacheReader(tiny.model, tiny.tokenizer, PROMPTS[:2], decode_steps=3)
    feeds = [reader.get_next() for _ in range(len(reader))]
    assert reader.get_next() is None and len(feeds) == 8
    config = tiny.model.config
    prefill, first_step = feeds[0], feeds[1]
    assert list(prefill) == export_kv.input_names(config.num_hidden_layers)
    prompt = prefill["input_ids"].shape[1]
    assert prefill["past_key_values.0.key"].shape == (1, config.num_key_value_heads, 0, config.head_dim)
    assert first_step["past_key_values.1.value"].shape == (1, config.num_key_value_heads, prompt, config.head_dim)
    assert first_step["position_ids"].tolist() == [[prompt]]
    assert first_step["attention_mask"].shape == (1, prompt + 1)
    with torch.no_grad():  # the decode tokens are the float model's greedy tokens
        greedy = tiny.model.generate(torch.from_numpy(prefill["input_ids"]), max_new_tokens=3, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, prompt:].tolist()
    assert [int(f["input_ids"][0, 0]) for f in feeds[1:4]] == greedy
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input_ids"], prefill["input_ids"])


def test_a_quantized_model_is_refused(int8, tmp_path):
    with pytest.raises(quantize.QuantizeError, match="already quantized"):
        quantize.quantize_int8_dynamic(int8, tmp_path / "again")


def test_missing_external_data_is_named(tmp_path, tiny_onnx):
    (tmp_path / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    with pytest.raises(onnx_graph.BrokenOnnxFile, match="model.onnx.data"):
        quantize.quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "out")


def test_a_bad_reader_fails_before_calibration(monkeypatch, tiny, tiny_onnx, tmp_path):
    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration started")
    monkeypatch.setattr(quantize, "channel_ranges", no_calibration)
    reader = calibration.PromptReader(tiny.tokenizer, PROMPTS[:1])
    reader.feeds = [{"input_ids": reader.feeds[0]["input_ids"]}]
    with pytest.raises(calibration.ReaderMismatch, match="attention_mask"):
        quantize.quantize_int8_static(tiny_onnx, tmp_path / "out", reader)


def test_interrupted_quantization_keeps_the_previous_model(monkeypatch, int8, tiny, tiny_onnx):
    before = int8.read_bytes()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(quantize, "quantize_static", interrupt)
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize_int8_static(tiny_onnx, int8.parent, calibration.PromptReader(tiny.tokenizer, PROMPTS[:2]))
    assert int8.read_bytes() == before
    assert not int8.parent.with_name(int8.parent.name + ".partial").exists()


def test_bench_quant_exports_in_a_child_process_once(tmp_path, monkeypatch):
    """The float export runs in its own process (its memory is gone before quantizing),
    and only when no valid export exists."""
    import subprocess

    from labkit import artifacts

    from labkit.bench import benchmarks

    monkeypatch.setenv("LABKIT_ARTIFACTS", str(tmp_path))
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    first = benchmarks.bench_quant("qwen3-tiny")
    assert len(calls) == 1 and calls[0][1:] == ["-m", "labkit", "bench-export", "--model", "qwen3-tiny"]
    assert artifacts.is_valid("qwen3-tiny", "fp32") and first["ratio"] < 0.5
    assert 0 <= first["agreement_chat"] <= 1 and {"correct_chat_fp32", "correct_chat_int8"} <= first.keys()

    class Loading(Exception):
        pass

    def load(name):  # the second run stops where it goes on to quantize: the export decision is made
        raise Loading(name)

    monkeypatch.setattr(benchmarks.models, "load", load)
    with pytest.raises(Loading):
        benchmarks.bench_quant("qwen3-tiny")
    assert len(calls) == 1  # the export was reused


def test_a_students_quantize_call_runs_inside_the_pipeline_and_its_choices_are_read_back(tmp_path, tiny, tiny_onnx):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from labkit import checks

    seen = {}

    def per_tensor_call(float_path, out_path, reader, ranges_file, keep_float):
        seen["keep_float"] = list(keep_float)
        quantize_static(str(float_path), str(out_path), reader, calibration_cache_path=str(ranges_file),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], per_channel=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float,
                        use_external_data_format=True, extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})

    recipe = quantize.Recipe(weight_only=("model.layers.0.mlp.down_proj",), weight_type="s8")
    path = quantize.quantize_int8_static(tiny_onnx, tmp_path / "mine", calibration.PromptReader(tiny.tokenizer, PROMPTS),
                                         recipe, call=per_tensor_call)
    assert "model.layers.0.mlp.down_proj/MatMul" in seen["keep_float"]
    assert quantize.qdq_types(path) == {"activations": {"uint8"}, "weights": {"int8"}, "weight_scales": {0}}
    with pytest.raises(AssertionError, match="per_channel=True"):
        checks.quantize_call_types(path, "s8")
    with pytest.raises(AssertionError, match="this CPU wants uint8"):
        checks.quantize_call_types(path, "u8")
    quantized, linears = quantize.static_linears(path)
    assert (quantized, linears) == (linears - 1, tiny.model.config.num_hidden_layers * 7)


def test_a_call_that_quantizes_what_must_stay_float_is_refused(tmp_path, tiny, tiny_onnx):
    from onnxruntime.quantization import quantize_static

    def ignores_keep_float(float_path, out_path, reader, ranges_file, keep_float):
        quantize_static(str(float_path), str(out_path), reader, calibration_cache_path=str(ranges_file),
                        op_types_to_quantize=["MatMul"], use_external_data_format=True)

    for keep in [("model.layers.0.mlp.down_proj",), ()]:  # attention's products have no ranges either way
        with pytest.raises(quantize.QuantizeError, match="nodes_to_exclude=keep_float"):
            quantize.quantize_int8_static(tiny_onnx, tmp_path / "int8", calibration.PromptReader(tiny.tokenizer, PROMPTS),
                                          quantize.Recipe(weight_only=keep), call=ignores_keep_float)
        assert not (tmp_path / "int8").exists()


def test_weight_only_everywhere_is_not_static_int8(tmp_path, tiny, tiny_onnx, int8):
    from labkit import checks

    assert checks.static_share(int8) > 0.9
    every = tuple(f"model.layers.{i}.{kind}" for i in range(tiny.model.config.num_hidden_layers)
                  for kind in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    path = quantize.quantize_int8_static(tiny_onnx, tmp_path / "weights-only", calibration.PromptReader(tiny.tokenizer, PROMPTS),
                                         quantize.Recipe(weight_only=every))
    checks.quantized_model(path)  # int8 weights: the old check passed this
    with pytest.raises(AssertionError, match="read int8 activations"):
        checks.static_share(path)
