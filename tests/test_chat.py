import copy

import numpy as np
import pytest

from labkit import chat as chat_module
from labkit import generate, prompts, runtime
from labkit.chat import Chat
from labkit.chat_box import ChatBox


@pytest.fixture(scope="module")
def session(tiny_onnx):
    return runtime.session(tiny_onnx)


class Recording(generate.NoCache):
    """The no-cache loop, remembering every prompt it was given."""
    prompts: list[list[int]] = []

    def start(self, prompt_ids):
        Recording.prompts.append(list(prompt_ids))
        return super().start(prompt_ids)


@pytest.fixture
def chat(session, tiny):
    Recording.prompts = []
    return Chat(session, tiny.tokenizer, "tiny", max_new_tokens=6, loop=Recording)


def scripted(logits_at):
    """A `loop` for Chat whose logits at call k are `logits_at(k)`, whatever the session."""
    class Scripted:
        def __init__(self, session):
            self.calls = 0

        def _next(self):
            self.calls += 1
            return logits_at(self.calls - 1)

        def start(self, prompt):
            return self._next()

        def step(self, token):
            return self._next()

    return Scripted


def rendered(tokenizer, messages):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def test_turns_build_on_the_history(chat, tiny):
    first = chat.send("Hello there")
    second = chat.send("And then?")
    assert [t.role for t in chat.transcript] == ["user", "assistant", "user", "assistant"]
    history = [{"role": "system", "content": prompts.CHAT_SYSTEM},
               {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first.text},
               {"role": "user", "content": "And then?"}]
    assert Recording.prompts[1] == rendered(tiny.tokenizer, history)
    assert chat.transcript[3].text == second.text
    assert "tokens/s" in chat.transcript[3].timing


def test_old_turns_make_room_for_new_ones(session, tiny):
    Recording.prompts = []
    small = Chat(session, tiny.tokenizer, context=90, max_new_tokens=6, loop=Recording)
    for i in range(6):
        assert small.send(f"Message number {i} with a few words in it") is not None
    assert all(len(p) + 6 <= 90 for p in Recording.prompts)
    last = tiny.tokenizer.decode(Recording.prompts[-1])
    assert "Message number 0" not in last and last.count("Message number 5") == 1
    assert "Message number 0" in tiny.tokenizer.decode(Recording.prompts[1])  # kept while there was room


def test_bad_messages_become_notices_and_the_chat_goes_on(chat):
    assert chat.send("   ") is None
    assert chat.send("word " * 3000) is None
    assert [t.role for t in chat.transcript] == ["notice", "notice"]
    assert "type a message" in chat.transcript[0].text
    assert "does not fit the context of 2048 tokens" in chat.transcript[1].text
    assert chat.send("Hi") is not None
    assert chat.history[0] == {"role": "user", "content": "Hi"}


def test_a_missing_model_and_a_kv_graph_become_notices(tmp_path, tiny, tiny_onnx):
    chat = Chat(tmp_path / "nowhere" / "model.onnx", tiny.tokenizer)
    assert "no ONNX model at" in chat.transcript[-1].text
    out = []
    chat_module.run_terminal(chat, read=lambda prompt: "/quit", write=lambda *args, **kwargs: out.append(args[0]))
    assert any("no ONNX model at" in line for line in out)  # shown before the first prompt
    assert chat.send("Hi") is None and "no model loaded" in chat.transcript[-1].text

    class KVSession:
        def get_inputs(self):
            return [type("Input", (), {"name": n}) for n in ("input_ids", "past_key_values.0.key")]

    assert not chat.use(KVSession())
    assert "KV-cache graph" in chat.transcript[-1].text
    assert chat.use(tiny_onnx, "tiny")
    assert chat.send("Hi").new_tokens > 0


def test_a_failing_model_becomes_a_notice(chat):
    def broken(token):
        raise RuntimeError("out of memory")

    chat.stepper.step = broken
    assert chat.send("Hi") is None
    assert chat.transcript[-1].text == "生成失败：out of memory / generation failed: out of memory"
    assert chat.history == []


def test_stop_interrupts_and_the_next_turn_is_whole(chat):
    chat.max_new_tokens = 40
    stopped = chat.send("Tell me everything", on_text=lambda piece: chat.stop())
    assert stopped.stopped_by == "stop" and stopped.new_tokens < 40
    assert "(stopped)" in chat.transcript[-1].timing
    whole = chat.send("Again", on_text=None)
    assert whole.stopped_by != "stop"


def test_the_think_block_is_never_shown(session, tiny):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.add_tokens(["<think>", "</think>"])
    start, end = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    words = tokenizer("Paris is nice", add_special_tokens=False)["input_ids"]
    secret = tokenizer(" secret plan", add_special_tokens=False)["input_ids"]
    script = [start, *secret, end, *words, tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def logits_at(k):
        logits = np.zeros(len(tokenizer), np.float32)
        logits[script[k]] = 1.0
        return logits

    chat = Chat(session, tokenizer, loop=scripted(logits_at), enable_thinking=True)
    result = chat.send("Where?")
    assert result.text == "Paris is nice"
    assert chat.history[-1]["content"] == "Paris is nice"
    assert "secret" not in chat.markdown()


def test_the_transcript_saves_as_markdown(chat, tmp_path, tiny_onnx):
    reply = chat.send("Hello")
    path = chat.save(tmp_path / "t.md")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# 与 tiny 对话 Chat with tiny\n")
    assert f"计算图：{tiny_onnx}" in text and f"graph: {tiny_onnx}" in text  # which graph answered
    assert "模型：tiny" in text and "model: tiny" in text and "no_repeat_ngram=4" in text
    assert "**你 You**: Hello" in text and f"**tiny**: {reply.text}" in text
    assert f"system prompt: {prompts.CHAT_SYSTEM}" in text


def test_the_system_prompt_is_the_labs_unless_changed(session, tiny):
    Recording.prompts = []
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for system, expected in ((prompts.CHAT_SYSTEM, [{"role": "system", "content": prompts.CHAT_SYSTEM}]),
                             ("Be terse.", [{"role": "system", "content": "Be terse."}]), (None, []), ("", [])):
        conversation = Chat(session, tiny.tokenizer, max_new_tokens=2, loop=Recording,
                            **({} if system == prompts.CHAT_SYSTEM else {"system": system}))
        conversation.send(question[0]["content"])
        assert Recording.prompts[-1] == rendered(tiny.tokenizer, expected + question)
    assert rendered(tiny.tokenizer, question) != rendered(tiny.tokenizer, [{"role": "system", "content": "Be terse."}]
                                                          + question)


def test_the_chat_box_runs_headless(chat, tmp_path):
    box = ChatBox(chat, transcript_path=str(tmp_path / "box.md"))
    box.message.value = "Hello box"
    box.max_tokens.value = 8
    box.send(wait=True)
    assert box.message.value == ""
    assert "Hello box" in box.transcript.value
    assert chat.transcript[-1].role == "assistant"
    assert "tokens/s" in box.status.value
    assert not box.send_button.disabled and box.stop_button.disabled
    box.save()
    assert "Hello box" in (tmp_path / "box.md").read_text(encoding="utf-8")
    box.clear()
    assert chat.transcript == [] and "Say something" in box.transcript.value


def test_the_chat_box_speaks_one_language_when_asked(chat, monkeypatch):
    monkeypatch.setenv("LABKIT_LANG", "zh")
    box = ChatBox(chat)
    assert (box.send_button.description, box.stop_button.description) == ("发送", "停止")
    assert "和模型说点什么吧" in box.transcript.value and "Say something" not in box.transcript.value
    monkeypatch.setenv("LABKIT_LANG", "en")
    assert ChatBox(chat).send_button.description == "Send"


def test_the_terminal_chat(chat, tmp_path):
    lines = iter(["", "Hello terminal", f"/save {tmp_path / 'term.md'}", "/quit"])
    out = []
    chat_module.run_terminal(chat, read=lambda prompt: next(lines),
                             write=lambda *args, **kwargs: out.append(" ".join(map(str, args))))
    printed = "".join(out)
    assert "[请先输入一条消息 / type a message first]" in printed and "tiny> [" not in printed
    assert chat.transcript[-1].text in printed
    assert "tokens/s" in printed and f"system prompt: {prompts.CHAT_SYSTEM}" in printed
    assert (tmp_path / "term.md").read_text(encoding="utf-8").count("Hello terminal") == 1


def test_the_chat_guards_against_loops_and_says_so(session, tiny):
    words = tiny.tokenizer(" la France,", add_special_tokens=False)["input_ids"]

    def looping(k):
        """A model that would say ' la France,' forever."""
        logits = np.full(len(tiny.tokenizer), -10.0, np.float32)
        logits[np.arange(100, 106)] = 4.0 - np.arange(6) * 0.1  # its next best ideas, in order
        logits[words[k % len(words)]] = 5.0
        return logits

    Looping = scripted(looping)
    guarded = Chat(session, tiny.tokenizer, "tiny", max_new_tokens=200, loop=Looping)
    result = guarded.send("What is the capital of France?")
    from labkit import quality

    assert not quality.loops(result.tokens)
    assert result.stopped_by == "repetition" and guarded.transcript[-1].role == "notice"
    assert "going round in circles" in guarded.transcript[-1].text
    plain = Chat(session, tiny.tokenizer, "tiny", max_new_tokens=200, loop=Looping, sampling=generate.GREEDY)
    assert quality.loops(plain.send("What is the capital of France?").tokens)


def test_the_chat_box_shows_the_guard_and_turns_it_off(chat):
    box = ChatBox(chat)
    assert box.guard.value is True and "repetition guard" in box.guard.description
    box.guard.value = False
    box.send("Hello", wait=True)
    assert chat.sampling.no_repeat_ngram == 0 and chat.sampling.repetition_penalty == 1.0


def test_the_chat_box_shows_the_system_prompt_and_changes_it(chat):
    box = ChatBox(chat)
    assert box.system.value == prompts.CHAT_SYSTEM and "system prompt" in box.system.description
    box.system.value = "  Answer in one word.  "
    box.send("Hello", wait=True)
    assert chat.system == "Answer in one word."
    assert "Answer in one word." in chat.tokenizer.decode(Recording.prompts[-1])
    box.system.value = " "
    box.send("Hello again", wait=True)
    assert chat.system is None and "Answer in one word." not in chat.tokenizer.decode(Recording.prompts[-1])


def test_the_chat_box_switches_graphs_and_the_conversation_goes_on(session, tiny, tiny_kv):
    """Notebook 04's box offers the student's INT8 first and other graphs beside it; a
    switch takes effect from the next message, with the graph's own loop; a graph that
    cannot be built is a notice and the chat stays on the graph it had."""
    def broken():
        raise FileNotFoundError("no fused graph here")

    conversation = Chat(session, tiny.tokenizer, "mine", max_new_tokens=4)
    box = ChatBox(conversation, graphs={"mine": lambda: (session, generate.NoCache),
                                        "cached": lambda: (tiny_kv, generate.cached_loop), "broken": broken})
    assert box.graph.options == ("mine", "cached", "broken") and box.graph.value == "mine"
    assert "mine" in box.title.value
    box.send("Hello", wait=True)
    box.graph.value = "cached"
    assert isinstance(conversation.stepper, generate.KVCache) and conversation.label == "cached"
    assert "cached" in box.title.value and "Replies from now on come from cached" in conversation.transcript[-1].text
    box.send("And now?", wait=True)
    assert conversation.transcript[-1].role == "assistant" and len(conversation.history) == 4
    box.graph.value = "broken"
    assert "no fused graph here" in conversation.transcript[-1].text and conversation.label == "cached"
    assert isinstance(conversation.stepper, generate.KVCache) and box.graph.value == "cached"
    assert ChatBox(conversation).graph.layout.display == "none"  # no graphs given: no selector
