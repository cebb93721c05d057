"""Calibration data for INT8 static quantization (notebook 03).

Static quantization fixes each activation's scale ahead of time, so the model
must "rehearse" inference on representative inputs first. The reader feeds the
no-cache graph one chat-formatted prompt at a time, in a fixed order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from tqdm.auto import tqdm

from .errors import LabkitError
from .messages import say
from .prompts import calibration_prompts, chat_ids
from .runtime import observing_session


class ReaderMismatch(LabkitError, ValueError):
    pass


class FeedReader(CalibrationDataReader):
    """A calibration reader over a list of feeds (dicts of input name -> array), in order."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = list(feeds)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.feeds)


class PromptReader(FeedReader):
    """Yields `{"input_ids", "attention_mask"}` int64 feeds of shape [1, tokens]."""

    def __init__(self, tokenizer, prompts: list[str] | None = None, max_tokens: int = 256):
        self.prompts = list(prompts if prompts is not None else calibration_prompts())
        super().__init__([self._feed(tokenizer, p, max_tokens) for p in self.prompts])

    @staticmethod
    def _feed(tokenizer, prompt: str, max_tokens: int) -> dict[str, np.ndarray]:
        ids = chat_ids(tokenizer, prompt, max_tokens)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

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
        raise ReaderMismatch(say("reader.empty", wanted=wanted))
    if set(feed) != set(expected):
        raise ReaderMismatch(say("reader.names", got=sorted(feed), wanted=wanted))
    wrong = {n: str(np.asarray(v).dtype) for n, v in feed.items() if str(np.asarray(v).dtype) != expected[n]}
    if wrong:
        raise ReaderMismatch(say("reader.dtypes", wrong=wrong, wanted=wanted))


def channel_ranges(model_path: str | Path, reader: CalibrationDataReader, tensors: list[str],
                   threads: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (last axis) min and max of float `tensors` over every feed of `reader`.

    ORT's own calibrators load the weights into a ModelProto, save an augmented
    copy and keep every feed's outputs: three copies of a 7 GB model. Here the
    session reads the weights from the model's own data file and the ranges are
    reduced feed by feed.
    """
    session = observing_session(model_path, tensors, threads)
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    total = len(reader) if hasattr(reader, "__len__") else None
    with tqdm(total=total, desc="calibrate", unit="feed") as bar:
        while (feed := reader.get_next()) is not None:
            for name, value in zip(tensors, session.run(tensors, feed)):
                flat = value.reshape(-1, value.shape[-1])
                low, high = flat.min(axis=0), flat.max(axis=0)
                if name in lows and lows[name].shape != low.shape:
                    # The last axis is a sequence (attention scores): no channels to keep.
                    low = np.minimum(low.min(), lows[name].min()).reshape(1)
                    high = np.maximum(high.max(), highs[name].max()).reshape(1)
                    lows[name], highs[name] = low, high
                lows[name] = np.minimum(lows[name], low) if name in lows else low
                highs[name] = np.maximum(highs[name], high) if name in highs else high
            bar.update()
    if hasattr(reader, "rewind"):
        reader.rewind()
    return {name: (lows[name], highs[name]) for name in tensors}


class KVCacheReader(CalibrationDataReader):
    """Feeds for the KV-cache graph: for each prompt the prefill (past length 0)
    and then `decode_steps` one-token steps whose past cache is recorded from the
    float PyTorch model, generating greedily. Calibrating on prefill alone gives
    decode-time activations (one token against a long cache) ranges never seen.
    Feeds are computed on demand; a cache is megabytes per step."""

    def __init__(self, model, tokenizer, prompts: list[str] | None = None, decode_steps: int = 4,
                 max_tokens: int = 256):
        self.model, self.decode_steps = model, decode_steps
        self.prompts = list(prompts if prompts is not None else calibration_prompts())
        self.prompt_feeds = [PromptReader._feed(tokenizer, p, max_tokens) for p in self.prompts]
        config = model.config
        self.layers = config.num_hidden_layers
        from .export_kv import cache_shape

        _, self.kv_heads, _, self.head_dim = cache_shape(config, 1, 0)
        self.rewind()

    def _feeds(self):
        import torch

        from .export_kv import empty_past

        for prompt in self.prompt_feeds:
            ids = prompt["input_ids"]
            empty = empty_past(self.kv_heads, self.head_dim)
            yield self._feed(ids, 0, [(empty, empty)] * self.layers)
            with torch.no_grad():
                out = self.model(input_ids=torch.from_numpy(ids), use_cache=True)
                for _ in range(self.decode_steps):
                    token = out.logits[:, -1:].argmax(-1)
                    cache = out.past_key_values
                    past = [(layer.keys.numpy(), layer.values.numpy()) for layer in cache.layers]
                    yield self._feed(token.numpy().astype(np.int64), cache.get_seq_length(), past)
                    out = self.model(input_ids=token, past_key_values=cache, use_cache=True)

    @staticmethod
    def _feed(ids: np.ndarray, past_length: int, past: list) -> dict[str, np.ndarray]:
        from .export_kv import PAST, token_feed

        feed = token_feed(ids, past_length)
        for i, (key, value) in enumerate(past):
            feed[f"{PAST}{i}.key"] = np.ascontiguousarray(key, dtype=np.float32)
            feed[f"{PAST}{i}.value"] = np.ascontiguousarray(value, dtype=np.float32)
        return feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = self._feeds()

    def __len__(self) -> int:
        return len(self.prompts) * (1 + self.decode_steps)

    def preview(self, n: int = 3) -> str:
        return (f"{len(self)} feeds: {len(self.prompts)} prompts x (prefill + {self.decode_steps} decode steps), "
                f"{self.layers} layers of cache [1, {self.kv_heads}, past, {self.head_dim}]")
