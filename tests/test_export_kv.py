import json

import numpy as np
import pytest
import torch

from labkit import calibration, checks, export_kv, generate, onnx_graph, prompts, quality, quantize, runtime
from labkit.generate import KVCache, NoCache, Recompute

PROMPTS = ("What is the capital of France?", "请用一句话介绍一下你自己。", "Count to five.")


@pytest.fixture(scope="module")
def kv_session(tiny_kv):
    return runtime.session(tiny_kv)


def test_graph_inputs_and_outputs(tiny_kv, tiny):
    layers = tiny.model.config.num_hidden_layers
    checks.kv_graph(tiny_kv, layers)
    checks.cache_names(export_kv.input_names(layers)[3:], tiny_kv)
    with pytest.raises(AssertionError, match="a key and a value per layer"):
        checks.cache_names([f"past_key_values.{i}.key" for i in range(layers)], tiny_kv)
    io = runtime.session(tiny_kv)
    assert [i.name for i in io.get_inputs()] == export_kv.input_names(layers)
    assert [o.name for o in io.get_outputs()] == export_kv.output_names(layers)
    past = io.get_inputs()[3]
    assert past.shape == ["batch", 2, "past_sequence", 8] and past.type == "tensor(float)"
    assert io.get_outputs()[1].shape == ["batch", 2, "total_sequence", 8]


def test_cached_greedy_equals_no_cache_and_pytorch(kv_session, tiny_onnx, tiny):
    no_cache = runtime.session(tiny_onnx)
    for prompt in PROMPTS:
        ids = prompts.chat_ids(tiny.tokenizer, prompt)
        cached = generate.generate(KVCache(kv_session), ids, max_new_tokens=32, stop=set()).tokens
        plain = generate.generate(KVCache(kv_session, io_binding=False), ids, max_new_tokens=32, stop=set()).tokens
        assert cached == plain == generate.greedy_ort(no_cache, ids, 32) == \
            generate.greedy_torch(tiny.model, torch.from_numpy(ids), 32)


def test_notebook_05s_check_holds_a_cached_loop_to_the_no_cache_graph(kv_session, tiny_onnx, tiny):
    """checks.loop_matches_reference with `reference`: the loop runs on the KV graph, labkit's
    no-cache loop on notebook 02's graph. A loop that forgets the cache fails it."""
    def cached(session, ids, new_tokens, stop):
        return generate.generate(KVCache(session), ids, max_new_tokens=new_tokens, stop=stop).tokens

    def forgetful(session, ids, new_tokens, stop):  # each step sees only the last token
        tokens = [generate.greedy_ort(no_cache, ids, 1)[0]]
        while len(tokens) < new_tokens:
            tokens.append(generate.greedy_ort(no_cache, np.array([[tokens[-1]]]), 1)[0])
        return tokens

    no_cache = runtime.session(tiny_onnx)
    checks.loop_matches_reference(cached, kv_session, tiny.tokenizer, list(PROMPTS), 24, reference=no_cache)
    with pytest.raises(AssertionError):
        checks.loop_matches_reference(forgetful, kv_session, tiny.tokenizer, list(PROMPTS), 24, reference=no_cache)


@pytest.fixture(scope="module", params=[False, True], ids=["int8", "int8, lm_head per call"])
def kv_int8(request, tmp_path_factory, tiny, tiny_kv):
    reader = calibration.KVCacheReader(tiny.model, tiny.tokenizer, prompts.calibration_prompts()[:4], decode_steps=3)
    recipe = quantize.Recipe(weight_only=("model.layers.1.mlp.down_proj",),  # one MatMulNBits layer too
                             dynamic_head=request.param)
    return quantize.quantize_int8_static(tiny_kv, tmp_path_factory.mktemp("q") / "kv-int8", reader, recipe)


def _bit_identical_loops(session, tokenizer) -> None:
    """Exact equality, not closeness: with transformers' own attention the first decode
    step already differs in the last bits (M = 1 takes another ONNX Runtime kernel), and
    INT8 rounding turns such bits into different tokens (see labkit/attention.py)."""
    for prompt in PROMPTS:
        ids = prompts.chat_ids(tokenizer, prompt)
        cached, recompute = KVCache(session), Recompute(session)
        logits, reference = cached.start(ids), recompute.start(ids)
        for _ in range(24):
            np.testing.assert_array_equal(logits, reference)
            token = int(np.argmax(logits))
            logits, reference = cached.step(token), recompute.step(token)


def test_decode_steps_are_bit_identical_to_whole_sequence_passes(tiny_kv, tiny):
    _bit_identical_loops(runtime.session(tiny_kv), tiny.tokenizer)


def test_int8_decode_steps_are_bit_identical_to_whole_sequence_passes(kv_int8, tiny):
    """lm_head's per-call scale included: it sees the last position only (quantize._dynamic_head)."""
    _bit_identical_loops(runtime.session(kv_int8), tiny.tokenizer)


def test_lm_head_per_call_gives_the_last_position_read_one_at_a_time(kv_int8, tiny):
    """The per-call graph's logits are [batch, 1, vocab]; quality.session_logits still gives
    every position's, each the logits of a pass ending there."""
    session = runtime.session(kv_int8)
    vocab = tiny.model.config.vocab_size
    per_call = quantize.recipe_of(onnx_graph.load_graph(kv_int8))["dynamic_head"]
    assert session.get_outputs()[0].shape[1:] == ([1, vocab] if per_call else ["sequence", vocab])
    ids = prompts.chat_ids(tiny.tokenizer, PROMPTS[1])
    logits = quality.session_logits(session)(ids)
    assert logits.shape == (1, ids.shape[1], vocab)
    for end in (1, ids.shape[1] // 2, ids.shape[1]):
        np.testing.assert_array_equal(logits[0, end - 1], Recompute(session).start(ids[:, :end]))


def test_prefill_and_decode_logits_match_pytorch(kv_session, tiny):
    import torch

    ids = prompts.chat_ids(tiny.tokenizer, "Hello there")
    with torch.no_grad():
        reference = tiny.model(torch.from_numpy(ids)).logits[0].numpy()
    step = KVCache(kv_session)
    logits = [step.start(ids[:, :-3])] + [step.step(int(t)) for t in ids[0, -3:]]
    for k, got in enumerate(logits):
        np.testing.assert_allclose(got, reference[ids.shape[1] - 4 + k], atol=1e-4)


def test_the_loops_reject_each_others_graph(kv_session, tiny_onnx):
    with pytest.raises(generate.WrongGraph, match="no past_key_values"):
        KVCache(runtime.session(tiny_onnx))
    with pytest.raises(generate.WrongGraph, match="KV-cache graph"):
        NoCache(kv_session)


def test_the_folder_runs_in_onnxruntime_genai(tiny_kv, kv_session, tiny):
    import onnxruntime_genai as og

    config = json.loads((tiny_kv.parent / export_kv.GENAI_CONFIG).read_text())
    assert config["model"]["decoder"]["num_hidden_layers"] == tiny.model.config.num_hidden_layers
    model = og.Model(str(tiny_kv.parent))
    ids = prompts.chat_ids(tiny.tokenizer, PROMPTS[0])
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=ids.shape[1] + 16, min_length=ids.shape[1] + 16)
    generator = og.Generator(model, params)
    generator.append_tokens(ids[0].tolist())
    while not generator.is_done():
        generator.generate_next_token()
    theirs = list(generator.get_sequence(0))[ids.shape[1]:]
    ours = generate.generate(KVCache(kv_session), ids, max_new_tokens=len(theirs), stop=set()).tokens
    assert len(theirs) == 16 and theirs == ours


def test_the_chat_switches_to_the_cached_loop(tiny_kv, tiny_onnx, tiny):
    from labkit.chat import Chat

    cached = Chat(tiny_kv, tiny.tokenizer, loop=KVCache, max_new_tokens=8)
    plain = Chat(tiny_onnx, tiny.tokenizer, max_new_tokens=8)
    for message in ("Hi", "And then?"):
        assert cached.send(message).tokens == plain.send(message).tokens
    assert cached.history == plain.history
