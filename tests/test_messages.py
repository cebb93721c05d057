"""Every message a check can fail with comes from labkit.messages, in Chinese and English."""
import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from labkit import checks, messages
from labkit.messages import TEXTS, fields_of, label, say

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u4e00-\u9fff]")
# The modules whose failures a student reads: the checks, the referee's verdicts and its
# child's errors, the lockdown's refusals, the reader check, the chat, a skipped demonstration.
MODULES = ["checks", "grading/verdicts", "grading/referee", "grading/child", "grading/lockdown", "calibration", "chat",
           "chat_box", "env", "__init__"]
FAILURES = {"AssertionError", "ChildGone", "PermissionError", "ReaderMismatch"}
# Messages made by say() elsewhere and passed on: the child's end, a verdict kept from an earlier run.
PASSED_ON = {"self._gone()", "result.get('message', '')"}


def _sources() -> dict[str, str]:
    found = {f"labkit/{m}.py": (ROOT / "labkit" / f"{m}.py").read_text() for m in MODULES}
    for path in sorted((ROOT / "source" / "llm_lab").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                found[f"{path.name} cell {i}"] = "".join(cell["source"])
    return found


def _says(node) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("say", "_",
                                                                                                      "label")


def _is_say(node) -> bool:
    return _says(node) or ast.unparse(node) in PASSED_ON


def _message_calls():
    """(where, key, keyword names) of every say/label call with a literal key."""
    for where, source in _sources().items():
        for node in ast.walk(ast.parse(source)):
            if _says(node) and node.args and isinstance(node.args[0], ast.Constant):
                yield where, node.args[0].value, {k.arg for k in node.keywords} - {"sep", None}


def test_every_text_has_chinese_first_and_english_with_the_same_fields():
    for key, (zh, en) in TEXTS.items():
        assert CJK.search(zh), f"{key}: no Chinese"
        assert not CJK.search(en), f"{key}: Chinese in the English text"
        assert fields_of(zh) == fields_of(en), key


def test_every_assertion_and_refusal_a_student_reads_comes_from_messages():
    bare = []
    for where, source in _sources().items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assert) and node.msg is not None and not _is_say(node.msg):
                bare.append(f"{where}:{node.lineno}")
            if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and getattr(node.exc.func, "id", None) in FAILURES and node.exc.args
                    and not any(_is_say(n) for n in ast.walk(node.exc.args[0]))):
                bare.append(f"{where}:{node.lineno}")
    assert not bare, f"messages written in place, not in labkit.messages: {bare}"


def test_every_call_fills_exactly_its_texts_fields_and_every_text_is_used():
    used = set()
    for where, key, given in _message_calls():
        assert key in TEXTS, f"{where}: no text {key!r}"
        assert given == fields_of(TEXTS[key][0]), f"{where}: {key} gets {sorted(given)}"
        used.add(key)
    assert set(TEXTS) - used == set(), "texts no code says"


def test_labkit_lang_picks_one_language_or_both(monkeypatch):
    monkeypatch.delenv("LABKIT_LANG", raising=False)
    both = say("summary.rows", n=3, bench=4)
    zh, en = TEXTS["summary.rows"]
    assert both == zh.format(n=3, bench=4) + "\n" + en.format(n=3, bench=4)
    assert label("chat.send") == "发送 Send"
    monkeypatch.setenv("LABKIT_LANG", "zh")
    assert say("summary.rows", n=3, bench=4) == "有 3 行；bench 有 4 行：bench 的每行对应一行。"
    assert label("chat.send") == "发送"
    monkeypatch.setenv("LABKIT_LANG", "EN ")
    assert say("summary.rows", n=3, bench=4) == "3 rows; bench has 4: one row per bench row"
    monkeypatch.setenv("LABKIT_LANG", "fr")  # not a language of the lab: both
    assert messages.language() == "both"


def test_a_failing_check_speaks_both_languages_and_one_when_asked(monkeypatch):
    bench = pd.DataFrame({"engine": ["onnxruntime"], "precision": ["fp32"], "cache": [False], "ratio": [1.0],
                          "tok_s": [10.0]})
    wrong = pd.DataFrame({"engine": ["onnxruntime"], "precision": ["fp32"], "cache": [False],
                          "compression": [2.0], "tok_s": [10.0]})
    monkeypatch.delenv("LABKIT_LANG", raising=False)
    with pytest.raises(AssertionError) as failed:
        checks.summary_frame(wrong, bench)
    assert str(failed.value).splitlines() == ["压缩比是 FP32 字节数除以该行的字节数（1 / bench['ratio']）。",
                                               "compression is FP32 bytes divided by the row's bytes (1 / bench['ratio'])"]
    monkeypatch.setenv("LABKIT_LANG", "en")
    with pytest.raises(AssertionError) as failed:
        checks.summary_frame(wrong, bench)
    assert not CJK.search(str(failed.value))
