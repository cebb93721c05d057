import re

import numpy as np
import pytest

from labkit import calibration, onnx_graph, prompts


@pytest.fixture(scope="module")
def graph_inputs(tiny_onnx):
    return onnx_graph.graph_io(tiny_onnx)["inputs"]


def test_prompt_set_is_bilingual_and_disjoint_from_heldout():
    shipped = prompts.calibration_prompts()
    assert len(shipped) >= 64 and len(set(shipped)) == len(shipped)
    chinese = [p for p in shipped if re.search(r"[\u4e00-\u9fff]", p)]
    assert 0.25 < len(chinese) / len(shipped) < 0.75
    heldout = {item["prompt"] for item in prompts.heldout()["prompts"]}
    assert heldout.isdisjoint(shipped)


def test_reader_feeds_match_the_graph(tiny, graph_inputs):
    reader = calibration.PromptReader(tiny.tokenizer)
    calibration.validate_reader(reader, graph_inputs)
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed)
    assert len(feeds) == len(reader) == len(prompts.calibration_prompts())
    first = feeds[0]
    rendered = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": reader.prompts[0]}], add_generation_prompt=True, tokenize=False)
    assert tiny.tokenizer.decode(first["input_ids"][0]) == rendered
    assert all(f["input_ids"].dtype == np.int64 and f["attention_mask"].all() for f in feeds)


def test_reader_is_deterministic_and_rewinds(tiny):
    a, b = calibration.PromptReader(tiny.tokenizer), calibration.PromptReader(tiny.tokenizer)
    first = a.get_next()
    a.rewind()
    assert np.array_equal(a.get_next()["input_ids"], first["input_ids"])
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a.feeds, b.feeds))
    assert a.preview(2).startswith(f"{len(a)} feeds")


class FixedReader:
    def __init__(self, feeds):
        self.feeds = feeds

    def get_next(self):
        return self.feeds.pop(0) if self.feeds else None


@pytest.mark.parametrize("feeds, message", [
    ([], "yielded nothing"),
    ([{"ids": np.zeros((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)}], "the graph expects"),
    ([{"input_ids": np.zeros((1, 3), np.int32), "attention_mask": np.ones((1, 3), np.int64)}],
     "wrong dtypes {'input_ids': 'int32'}"),
])
def test_bad_readers_are_named_before_calibration(graph_inputs, feeds, message):
    with pytest.raises(calibration.ReaderMismatch, match=re.escape(message)) as err:
        calibration.validate_reader(FixedReader(feeds), graph_inputs)
    assert "input_ids (int64), attention_mask (int64)" in str(err.value)
