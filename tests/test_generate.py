import dataclasses

import numpy as np
import pytest
import torch

from labkit import generate, prompts, runtime
from labkit.generate import NoCache, Sampling


class Scripted:
    """A stepper whose argmax follows a script."""

    def __init__(self, script):
        self.script, self.vocab, self.calls = list(script), max(script) + 1, 0

    def _logits(self):
        logits = np.zeros(self.vocab, np.float32)
        logits[self.script[min(self.calls, len(self.script) - 1)]] = 5.0
        self.calls += 1
        return logits

    def start(self, prompt):
        self.prompt = list(prompt)
        return self._logits()

    def step(self, token):
        return self._logits()


@pytest.fixture(scope="module")
def session(tiny_onnx):
    return runtime.session(tiny_onnx)


def test_greedy_equals_pytorch_generate(session, tiny):
    for prompt in ("What is the capital of France?", "请用一句话介绍一下你自己。", "Count to five."):
        ids = prompts.chat_ids(tiny.tokenizer, prompt)
        reference = generate.greedy_torch(tiny.model, torch.from_numpy(ids), 32)
        ours = generate.generate(NoCache(session), ids, max_new_tokens=32, stop=set()).tokens
        assert ours == reference


def test_a_seed_reproduces_a_sampled_run(session, tiny):
    ids = prompts.chat_ids(tiny.tokenizer, "Tell me a story.")

    def run(seed):
        sampling = Sampling(temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=seed)
        return generate.generate(NoCache(session), ids, max_new_tokens=24, sampling=sampling, stop=set()).tokens

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7) != generate.greedy_ort(session, ids, 24)


def test_next_token_filters():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 3.0, 2.0, 0.5], np.float32)
    assert generate.next_token(logits, Sampling(), [], rng) == 1
    assert generate.next_token(logits, Sampling(temperature=5.0, top_k=1), [], rng) == 1
    assert generate.next_token(logits, Sampling(temperature=5.0, top_p=0.01), [], rng) == 1
    # 3 / 2 = 1.5 < 2: the penalty moves the choice to token 2
    assert generate.next_token(logits, Sampling(repetition_penalty=2.0), [1], rng) == 2
    assert logits[1] == 3.0  # the caller's logits are untouched


def test_sampling_follows_the_softmax():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([1.0, 3.0], np.float32))
    draws = [generate.next_token(logits, Sampling(temperature=1.0), [], rng) for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(0.75, abs=0.03)
    top_p = [generate.next_token(np.log(np.array([1, 2, 7], np.float32)), Sampling(temperature=1.0, top_p=0.75),
                                 [], rng) for _ in range(200)]
    assert set(top_p) == {1, 2}  # 0.7 alone is short of 0.75; 0.7 + 0.2 reaches it


def test_stops_at_end_of_turn_without_returning_it(tiny):
    end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in prompts.stop_ids(tiny.tokenizer)
    result = generate.generate(Scripted([5, 6, end, 7]), [1, 2, 3], tiny.tokenizer,
                               max_new_tokens=10)
    assert result.tokens == [5, 6]
    assert result.stopped_by == "end of turn"
    assert result.prompt_tokens == 3
    capped = generate.generate(Scripted([5, 6, 7, 8]), [1], max_new_tokens=3, stop=set())
    assert capped.tokens == [5, 6, 7] and capped.stopped_by == "max_new_tokens"


def test_should_stop_ends_after_the_current_token():
    asked = iter([False, False, True])
    result = generate.generate(Scripted([4]), [1], max_new_tokens=20, stop=set(), should_stop=lambda: next(asked))
    assert result.tokens == [4, 4, 4]
    assert result.stopped_by == "stop"


def test_streamed_chinese_is_never_garbled(tiny):
    text = "中国的首都是北京。我喜欢音乐🎵!"
    tokens = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    # the test only means something if some token is a fragment of a character
    assert any("\ufffd" in tiny.tokenizer.decode([t]) for t in tokens)
    result = generate.generate(Scripted(tokens + [0]), [1], tiny.tokenizer,
                               max_new_tokens=len(tokens), stop=set())
    assert result.tokens == tokens
    assert all("\ufffd" not in piece for piece in result.pieces)
    assert "".join(result.pieces) == result.text == text
    assert len(result.pieces) > 5  # streamed, not delivered at the end
    cut = next(n for n in range(1, len(tokens)) if tiny.tokenizer.decode(tokens[:n]).endswith("\ufffd"))
    truncated = generate.generate(Scripted(tokens + [0]), [1], tiny.tokenizer, max_new_tokens=cut, stop=set())
    assert truncated.text == tiny.tokenizer.decode(tokens[:cut]).rstrip("\ufffd")  # a cut character is left out


def test_think_block_is_hidden():
    class Letters:  # token i decodes to chr(ord('a') + i)
        def decode(self, tokens, skip_special_tokens=True):
            return "".join(chr(97 + t) for t in tokens)

    stream = generate.TextStream(Letters(), think=(20, 21))
    pieces = [stream.push(t) for t in (20, 1, 2, 21, 0, 1)] + [stream.flush()]
    assert "".join(pieces) == "ab"


def test_timing_is_reported(session, tiny):
    ids = prompts.chat_ids(tiny.tokenizer, "Hi")
    result = generate.generate(NoCache(session), ids, tiny.tokenizer, max_new_tokens=8, stop=set())
    assert result.new_tokens == 8 and result.prompt_tokens == ids.shape[1]
    assert 0 < result.ttft_s < result.seconds
    assert result.tok_s > 0
    assert "8 new" in result.timing()


def test_the_no_cache_loop_rejects_the_kv_graph():
    class KVSession:
        def get_inputs(self):
            class Input:
                def __init__(self, name):
                    self.name = name
            return [Input(n) for n in ("input_ids", "attention_mask", "past_key_values.0.key")]

    with pytest.raises(generate.WrongGraph, match="KV-cache graph"):
        NoCache(KVSession())


def test_the_graded_loops_stay_plain_greedy_and_the_chat_has_the_guard():
    assert generate.GREEDY.no_repeat_ngram == 0 and generate.GREEDY.repetition_penalty == 1.0
    assert generate.CHAT.no_repeat_ngram == 4
    looping = [7, 8, 9, 10] * 20  # what a greedy model stuck in a loop would say
    plain = generate.generate(Scripted(looping), [1, 2], max_new_tokens=40, stop=set())
    assert plain.tokens == looping[:40] and plain.stopped_by == "max_new_tokens"


def test_the_chat_guard_leaves_the_questions_own_words_free():
    """The answer may repeat a word of the prompt ("The capital of France is ..."), even
    where another token comes close: the guard bans only the reply's own repeated 4-grams
    and penalizes no token of the prompt."""
    class CloseCall(Scripted):
        def _logits(self):
            logits = super()._logits()
            logits[9] = 4.8  # a runner-up no prompt holds; a penalty of 1.1 would let it win
            return logits

    script = [3, 4, 5, 6, 9]
    result = generate.generate(CloseCall(script), [3, 4, 5, 6], max_new_tokens=4, stop=set(),
                               sampling=generate.CHAT)
    assert result.tokens == script[:4]
    penalized = generate.generate(CloseCall(script), [3, 4, 5, 6], max_new_tokens=4, stop=set(),
                                  sampling=dataclasses.replace(generate.CHAT, repetition_penalty=1.1))
    assert penalized.tokens[0] == 9


def test_no_repeated_ngram_bans_the_token_that_would_close_one():
    reply = [5, 6, 7, 1, 5, 6]
    assert generate.repeating(reply, 3) == [7]      # 5 6 7 is in the reply: 7 may not follow 5 6 again
    assert generate.repeating(reply, 4) == []
    logits = np.array([0, 0, 0, 0, 0, 0, 0, 9, 8], np.float32)
    rng = np.random.default_rng(0)
    assert generate.next_token(logits, Sampling(no_repeat_ngram=3), [], rng, reply) == 8
    assert generate.next_token(logits, Sampling(), [], rng, reply) == 7


def test_a_reply_going_round_in_circles_is_stopped():
    # With 4-grams banned the model slips into a loop that varies (13 distinct tokens would
    # still be plain text; this one cycles through 5).
    cycle = [11, 12, 13, 14, 15]
    result = generate.generate(Scripted(cycle * 40), [1], max_new_tokens=200, stop=set(),
                               sampling=Sampling(no_repeat_ngram=4))
    assert result.stopped_by == "repetition"
    assert len(result.tokens) == generate.LOOP_WINDOW
    assert not generate.going_round(list(range(64))) and generate.going_round(cycle * 13)



class Causal:
    """A no-cache graph's stand-in: each position's best next token is the sum of the tokens
    up to it, modulo the vocabulary, one logit ahead of the rest; at the position that ends
    a sequence of `tie_at` tokens, a runner-up only 0.001 behind. Counts its passes."""

    def __init__(self, vocab: int = 11, tie_at: int | None = None):
        self.vocab, self.tie_at, self.passes = vocab, tie_at, 0

    def get_inputs(self):
        return [type("Input", (), {"name": n})() for n in ("input_ids", "attention_mask")]

    def get_outputs(self):
        return [type("Output", (), {"name": "logits", "shape": ["batch", "sequence", self.vocab]})()]

    def run(self, names, feed):
        self.passes += 1
        ids = feed["input_ids"][0]
        logits = np.zeros((1, len(ids), self.vocab), np.float32)
        for i in range(len(ids)):
            best = int(ids[: i + 1].sum()) % self.vocab
            logits[0, i, best] = 1.0
            if i + 1 == self.tie_at:
                logits[0, i, (best + 1) % self.vocab] = 0.999
        return [logits]


PROMPT = np.array([[3, 4]], np.int64)  # the answer: 7, 3, 6, 1, 2, 4, 8, ...


def _loop(session, n, stop):
    return generate.generate(NoCache(session), PROMPT, max_new_tokens=n, stop=stop).tokens


def test_a_right_guess_is_settled_in_one_pass():
    for stop in (set(), {1}):  # a stop token ends the answer after three
        expected = _loop(Causal(), 6, stop)
        assert len(expected) == (3 if stop else 6)
        session = Causal()
        assert generate.greedy_ort(session, PROMPT, 6, stop, guess=expected) == expected and session.passes == 1
    assert generate.greedy_ort(Causal(), PROMPT, 0, guess=[7]) == []


@pytest.mark.parametrize("guess, passes", [
    ([7, 3, 6, 2, 4, 9], 1 + 2), ([7, 3], 1 + 3), ([7, 3, 6, 1, 2, 4, 8, 5], 1), ([], 1 + 5),
    ([7, 3, np.int64(6)], 6), ([7, 3, 6.0], 6), ([7, 3, 60], 6), (None, 6), ("7 3 6", 6)],
    ids=["a wrong token", "cut short", "too long", "empty", "numpy ints", "a float", "out of the vocabulary",
         "nothing", "text"])
def test_any_other_guess_gives_the_loops_tokens_and_runs_it_from_where_the_guess_fails(guess, passes):
    """Passes: the one over the guess, then the loop's from the first token it does not settle
    (a wrong token is itself settled by that pass); a guess that is not a list of token ids
    leaves the whole loop to run, 6 passes."""
    session = Causal()
    assert generate.greedy_ort(session, PROMPT, 6, guess=guess) == _loop(Causal(), 6, set())
    assert session.passes == passes


def test_a_near_tie_is_left_to_the_loop():
    expected = _loop(Causal(tie_at=4), 6, set())
    session = Causal(tie_at=4)
    assert generate.greedy_ort(session, PROMPT, 6, guess=expected) == expected
    assert session.passes == 1 + 4  # the pass settles 7 and 3; the loop computes the last four


def test_one_pass_gives_each_position_the_logits_of_the_loops_pass(session, tiny):
    """What a guess's check rests on, on a real graph: ONNX Runtime's logits for a position do
    not depend on the tokens after it (the bundled model's graphs: a difference of 0.0)."""
    for prompt in ("What is the capital of France?", "请用一句话介绍一下你自己。"):
        ids = prompts.chat_ids(tiny.tokenizer, prompt)
        tokens = generate.greedy_ort(session, ids, 12)
        loop = NoCache(session)
        steps = [loop.start(ids)] + [loop.step(t) for t in tokens[:-1]]
        whole = loop.logits(np.concatenate([ids, np.array([tokens], np.int64)], axis=1))[0]
        assert np.abs(whole[ids.shape[1] - 1:-1] - np.stack(steps)).max() < generate.GUESS_MARGIN / 100
        assert generate.greedy_ort(session, ids, 12, guess=tokens) == tokens


def test_pytorchs_no_cache_answer_checks_a_guess_in_one_pass(tiny):
    """greedy_eager: PyTorch recomputing the whole sequence each step, its guess (PyTorch's
    cached answer by default, or one given, right or wrong) settled in one pass; one pass's
    logits are the loop's to well under the margin."""
    import torch

    model, ids = tiny.model, prompts.chat_ids(tiny.tokenizer, "What is the capital of France?")
    sequence, steps = torch.from_numpy(ids), []
    with torch.inference_mode():
        for _ in range(12):
            steps.append(model(sequence, use_cache=False).logits[0, -1].numpy())
            sequence = torch.cat([sequence, torch.tensor([[int(steps[-1].argmax())]])], dim=1)
        whole = model(sequence[:, :-1], use_cache=False).logits[0, ids.shape[1] - 1:].numpy()
    loop = sequence[0, ids.shape[1]:].tolist()
    assert np.abs(whole - np.stack(steps)).max() < generate.GUESS_MARGIN / 100
    wrong = loop[:4] + [(t + 1) % model.config.vocab_size for t in loop[4:]]
    for guess in (None, loop, wrong, [], loop[:3]):
        assert generate.greedy_eager(model, ids, 12, guess) == loop
