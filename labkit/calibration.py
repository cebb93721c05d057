"""Calibration data for INT8 static quantization (notebook 03).

Static quantization fixes each activation's scale ahead of time, so the model
must "rehearse" inference on representative inputs first. The reader feeds the
no-cache graph one chat-formatted prompt at a time, in a fixed order.
"""
from __future__ import annotations

import json
from importlib import resources

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


def calibration_prompts() -> list[str]:
    """The shipped prompt set (English and Chinese, varied tasks)."""
    data = json.loads(resources.files("labkit").joinpath("data/calibration_prompts.json").read_text("utf-8"))
    return data["prompts"]


def heldout() -> dict:
    """Held-out prompts and text, never used for calibration."""
    return json.loads(resources.files("labkit").joinpath("data/heldout.json").read_text("utf-8"))


class ReaderMismatch(ValueError):
    pass


class PromptReader(CalibrationDataReader):
    """Yields `{"input_ids", "attention_mask"}` int64 feeds of shape [1, tokens]."""

    def __init__(self, tokenizer, prompts: list[str] | None = None, max_tokens: int = 256):
        self.prompts = list(prompts if prompts is not None else calibration_prompts())
        self.feeds = [self._feed(tokenizer, p, max_tokens) for p in self.prompts]
        self._next = 0

    @staticmethod
    def _feed(tokenizer, prompt: str, max_tokens: int) -> dict[str, np.ndarray]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"][:max_tokens]
        ids = np.asarray([ids], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def preview(self, n: int = 3) -> str:
        lines = [f"{len(self)} feeds, {sum(f['input_ids'].shape[1] for f in self.feeds):,} tokens in all"]
        for prompt, feed in list(zip(self.prompts, self.feeds))[:n]:
            lines.append(f"  {feed['input_ids'].shape[1]:4d} tokens  {prompt}")
        return "\n".join(lines)


def validate_reader(reader: CalibrationDataReader, graph_inputs: list[dict]) -> None:
    """Check the reader's first feed against the graph's inputs before any
    calibration time is spent; rewinds the reader afterwards when it can."""
    expected = {v["name"]: v["dtype"] for v in graph_inputs}
    wanted = ", ".join(f"{n} ({d})" for n, d in expected.items())
    feed = reader.get_next()
    if hasattr(reader, "rewind"):
        reader.rewind()
    if not feed:
        raise ReaderMismatch(f"the calibration reader yielded nothing; it must yield dicts with {wanted}")
    if set(feed) != set(expected):
        raise ReaderMismatch(f"the reader yields {sorted(feed)}, the graph expects {wanted}")
    wrong = {n: str(np.asarray(v).dtype) for n, v in feed.items() if str(np.asarray(v).dtype) != expected[n]}
    if wrong:
        raise ReaderMismatch(f"wrong dtypes {wrong}; the graph expects {wanted}")
