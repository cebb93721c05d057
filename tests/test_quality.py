import math

import numpy as np
import pytest

from labkit import prompts, quality, runtime


@pytest.fixture(scope="module")
def session(tiny_onnx):
    return runtime.session(tiny_onnx)


def test_perplexity_of_a_uniform_model_is_the_vocabulary(tiny):
    vocab = len(tiny.tokenizer)
    uniform = lambda ids: np.zeros((1, ids.shape[1], vocab), np.float32)  # noqa: E731
    assert quality.perplexity(uniform, tiny.tokenizer, "a short text of several tokens") == pytest.approx(vocab)


def test_perplexity_rewards_the_right_next_token(tiny):
    text = "one two three four five"
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = max(ids) + 1

    def oracle(batch):  # puts logit 10 on each true next token
        out = np.zeros((1, len(ids), vocab), np.float32)
        for t, nxt in enumerate(ids[1:]):
            out[0, t, nxt] = 10.0
        return out

    expected = math.exp(-(10 - math.log(math.exp(10) + vocab - 1)))
    assert quality.perplexity(oracle, tiny.tokenizer, text) == pytest.approx(expected)


def test_onnx_and_torch_perplexities_agree(session, tiny):
    onnx_ppl = quality.heldout_perplexities(quality.session_logits(session), tiny.tokenizer)
    torch_ppl = quality.heldout_perplexities(quality.torch_logits(tiny.model), tiny.tokenizer)
    for lang in ("en", "zh"):
        assert onnx_ppl[lang] == pytest.approx(torch_ppl[lang], rel=1e-5)


def test_prefix_agreement():
    assert quality.prefix_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1
    assert quality.prefix_agreement([1, 2, 9, 4], [1, 2, 3, 4]) == 0.5  # the later match does not count
    assert quality.prefix_agreement([7], [1]) == 0


def test_a_graph_agrees_with_itself(session, tiny):
    runs = quality.greedy_runs(session, tiny.tokenizer, new_tokens=4)[0]
    assert quality.agreement(runs, runs) == 1.0


def test_greedy_runs_answer_after_the_system_turn_they_are_given(session, tiny, monkeypatch):
    """bench-quant's second pair of runs sees the chat's prompt: the system turn, then the question."""
    fed = []
    monkeypatch.setattr(quality, "greedy_ort", lambda session, ids, new_tokens: fed.append(ids) or [0])
    quality.greedy_runs(session, tiny.tokenizer, system=prompts.CHAT_SYSTEM)
    quality.greedy_runs(session, tiny.tokenizer)
    questions = [item["prompt"] for item in prompts.heldout()["prompts"]]
    chat = [prompts.render(tiny.tokenizer, [{"role": "system", "content": prompts.CHAT_SYSTEM},
                                            {"role": "user", "content": q}]) for q in questions]
    bare = [prompts.render(tiny.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    assert [ids[0].tolist() for ids in fed] == chat + bare
    assert chat != bare


def test_correct_counts_answers_that_contain_an_expected_word(tiny):
    items = prompts.heldout()["prompts"]
    answerable = [item for item in items if item["expect"]]
    encode = lambda text: tiny.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    right = [encode(f"I think it is {item['expect'][-1]}.") if item["expect"] else encode("no idea")
             for item in items]
    assert quality.correct(right, tiny.tokenizer) == len(answerable) >= 5
    wrong = [encode("no idea")] * len(items)
    assert quality.correct(wrong, tiny.tokenizer) == 0
    first_wrong = [encode("no idea")] + right[1:]
    assert quality.correct(first_wrong, tiny.tokenizer) == len(answerable) - 1


def test_next_token_agreement_is_the_share_of_positions_predicted_alike(tiny):
    from labkit import checks

    vocab = len(tiny.tokenizer)

    def echo(ids):  # predicts the token it reads
        out = np.zeros((1, ids.shape[1], vocab), np.float32)
        out[0, np.arange(ids.shape[1]), ids[0]] = 1.0
        return out

    def echo_every_third(ids):  # predicts token 0 at two positions in three
        out = echo(ids)
        out[0, [t for t in range(ids.shape[1]) if t % 3], 0] = 2.0
        return out

    assert quality.next_token_agreement(echo, echo, tiny.tokenizer) == {"en": 1.0, "zh": 1.0}
    shares = quality.next_token_agreement(echo_every_third, echo, tiny.tokenizer, max_tokens=30)
    assert shares == {"en": pytest.approx(10 / 30), "zh": pytest.approx(10 / 30)}
    checks.follows_fp32({"en": 0.8, "zh": 0.9}, at_least=0.75)
    with pytest.raises(AssertionError, match=r"only 33% \(en\), 33% \(zh\)"):
        checks.follows_fp32(shares, at_least=0.75)
