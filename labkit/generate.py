"""Generation loops over an ONNX Runtime session (notebooks 04 and 05).

`NoCache` is the loop of notebook 04: every step feeds the whole sequence again,
so step t costs a forward pass over t tokens. `KVCache` is notebook 05's: each
step feeds one token and the keys and values of the past. `generate` drives
either with greedy decoding or sampling, stop tokens, streaming and timing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from . import prompts
from .errors import LabkitError



class WrongGraph(LabkitError, ValueError):
    pass


@dataclass(frozen=True)
class Sampling:
    """Greedy when `temperature` is 0; otherwise sampling, reproducible by `seed`."""
    temperature: float = 0.0
    top_k: int = 0                   # 0: no limit
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the sequence
    seed: int | None = 0
    no_repeat_ngram: int = 0         # n > 0: the reply never repeats an n-gram of its own, and a reply
                                     # that goes round in circles anyway is stopped (`going_round`)


GREEDY = Sampling()  # the graded loops: plain argmax, no guard
# The chat's defaults. A 135M model, or an INT8 one whose first token flips, can loop forever
# on greedy ("la France, la France, ..."); no 4-gram of the reply said twice keeps it talking.
# No repetition penalty: it also pushes down the words of the question and of earlier turns
# ("capital", "France"), and on the held-out prompts in one conversation (bench-chat, VNNI,
# 2026-12-01) penalty 1.1 took the INT8 KV chat from 3 to 1 correct answers of 6, FP32's
# from 4 to 3, while neither looped without it.
CHAT = Sampling(no_repeat_ngram=4)


@dataclass
class Result:
    tokens: list[int]
    text: str
    prompt_tokens: int
    ttft_s: float                    # prompt in, first new token out
    seconds: float                   # the whole call
    stopped_by: str                  # "end of turn", "max_new_tokens", "stop" or "repetition"
    pieces: list[str] = field(default_factory=list, repr=False)

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tok_s(self) -> float:
        """Decode speed: tokens after the first, per second after the first."""
        if self.new_tokens < 2 or self.seconds <= self.ttft_s:
            return 0.0
        return (self.new_tokens - 1) / (self.seconds - self.ttft_s)

    def timing(self) -> str:
        return (f"{self.prompt_tokens} prompt tokens, {self.new_tokens} new, first token after "
                f"{self.ttft_s:.2f} s, {self.tok_s:.1f} tokens/s")


class NoCache:
    """Logits of the last position, feeding the whole sequence at every step."""

    def __init__(self, session):
        names = [i.name for i in session.get_inputs()]
        if any(n.startswith("past_key_values") for n in names):
            raise WrongGraph("this is the KV-cache graph (it takes past_key_values inputs); the no-cache loop "
                             "needs notebook 02's graph, whose only inputs are input_ids and attention_mask")
        if "input_ids" not in names:
            raise WrongGraph(f"this graph has no input_ids input (its inputs: {', '.join(names)})")
        self.session, self.names = session, names

    def start(self, prompt_ids: np.ndarray) -> np.ndarray:
        self.ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
        return self._last_logits()

    def step(self, token: int) -> np.ndarray:
        self.ids = np.concatenate([self.ids, np.array([[token]], np.int64)], axis=1)
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        return self.logits(self.ids)[0, -1]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Every position's logits for `ids` (greedy_ort checks a guess with them)."""
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        return self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.names})[0]


class KVCache:
    """Logits of the last position, feeding only the new tokens plus the cache of
    the past (notebook 05's graph). With `io_binding`, the cache stays in ONNX
    Runtime's own buffers from one step to the next instead of being copied out
    to numpy and back in."""

    def __init__(self, session, io_binding: bool = True):
        from .export_kv import PAST, PRESENT, empty_past

        inputs = {i.name: i for i in session.get_inputs()}
        if f"{PAST}0.key" not in inputs:
            raise WrongGraph("this graph has no past_key_values inputs: it is notebook 02's graph without a "
                             "cache; use the no-cache loop (NoCache) or export the KV graph (notebook 05)")
        self.session, self.io_binding = session, io_binding
        self.past_names = [n for n in inputs if n.startswith(PAST)]
        self.present_names = [PRESENT + n[len(PAST):] for n in self.past_names]
        _, heads, _, head_dim = inputs[f"{PAST}0.key"].shape
        self.empty = empty_past(heads, head_dim)

    def start(self, prompt_ids: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        self.length = 0
        self.past = [ort.OrtValue.ortvalue_from_numpy(self.empty) for _ in self.past_names] if self.io_binding \
            else [self.empty] * len(self.past_names)
        return self._run(np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1))

    def step(self, token: int) -> np.ndarray:
        return self._run(np.array([[token]], np.int64))

    def _run(self, ids: np.ndarray) -> np.ndarray:
        from .export_kv import token_feed

        feed = token_feed(ids, self.length)
        if self.io_binding:
            binding = self.session.io_binding()
            for name, value in feed.items():
                binding.bind_cpu_input(name, value)
            for name, value in zip(self.past_names, self.past):
                binding.bind_ortvalue_input(name, value)
            for name in ["logits", *self.present_names]:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            logits, self.past = outputs[0].numpy(), outputs[1:]
        else:
            outputs = self.session.run(["logits", *self.present_names], {**feed, **dict(zip(self.past_names, self.past))})
            logits, self.past = outputs[0], outputs[1:]
        self.length += ids.shape[1]
        return logits[0, -1]


class Recompute(KVCache):
    """The no-cache strategy on the KV graph: every step starts from an empty past
    and feeds the whole sequence. Same graph, same weights as `KVCache`, so the two
    must pick the same tokens; only the work per step differs."""

    def start(self, prompt_ids: np.ndarray) -> np.ndarray:
        self.ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
        return super().start(self.ids)

    def step(self, token: int) -> np.ndarray:
        self.ids = np.concatenate([self.ids, np.array([[token]], np.int64)], axis=1)
        return super().start(self.ids)


class SharedKVCache:
    """The fused graph's loop (`fused.py`): past and present are one preallocated buffer
    per layer, bound as both input and output, and GroupQueryAttention writes each new
    token's keys and values into it in place, so a step copies nothing of the cache.
    The graph takes no positions: it counts them from the attention mask. The buffer
    holds `capacity` positions and doubles when a sequence outgrows it."""

    def __init__(self, session, capacity: int = 2048):
        from .export_kv import PAST, PRESENT

        inputs = {i.name: i for i in session.get_inputs()}
        if f"{PAST}0.key" not in inputs or "position_ids" in inputs:
            raise WrongGraph("this is not a fused KV graph (fused.py): use KVCache for notebook 05's graph, "
                             "NoCache for notebook 02's")
        self.session, self.capacity = session, capacity
        self.past_names = [n for n in inputs if n.startswith(PAST)]
        self.present_names = [PRESENT + n[len(PAST):] for n in self.past_names]
        _, self.heads, _, self.head_dim = inputs[f"{PAST}0.key"].shape

    def _allocate(self, capacity: int) -> None:
        """Zeroed arrays and the OrtValues over the same memory (no copy on CPU), bound once
        as past and present; what the cache held so far is kept."""
        import onnxruntime as ort

        arrays = [np.zeros((1, self.heads, capacity, self.head_dim), np.float32) for _ in self.past_names]
        for old, new in zip(getattr(self, "arrays", []), arrays):
            new[:, :, :self.length] = old[:, :, :self.length]
        self.arrays, self.binding = arrays, self.session.io_binding()
        for past, present, array in zip(self.past_names, self.present_names, arrays):
            buffer = ort.OrtValue.ortvalue_from_numpy(array)
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)

    def start(self, prompt_ids: np.ndarray) -> np.ndarray:
        self.length = 0
        self._allocate(self.capacity)
        return self._run(np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1))

    def step(self, token: int) -> np.ndarray:
        return self._run(np.array([[token]], np.int64))

    def _run(self, ids: np.ndarray) -> np.ndarray:
        total = self.length + ids.shape[1]
        if total > self.arrays[0].shape[2]:
            self._allocate(max(total, 2 * self.arrays[0].shape[2]))
        self.binding.bind_cpu_input("input_ids", ids)  # per step: the new tokens, the mask, the logits
        self.binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        self.binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(self.binding)
        self.length = total
        return self.binding.get_outputs()[-1].numpy()[0, -1]  # logits: bound last, rebound in place


def cached_loop(session):
    """The cached loop a KV graph needs: SharedKVCache for a fused graph, else KVCache."""
    names = {i.name for i in session.get_inputs()}
    return KVCache(session) if "position_ids" in names else SharedKVCache(session)


def repeating(reply: list[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram the reply already holds."""
    if n <= 0 or len(reply) < n:
        return []
    prefix = reply[len(reply) - n + 1:]
    return [reply[i + n - 1] for i in range(len(reply) - n + 1) if reply[i:i + n - 1] == prefix]


LOOP_WINDOW, LOOP_DISTINCT = 64, 12  # 64 reply tokens with at most 12 distinct ones: going round


def going_round(reply: list[int]) -> bool:
    """A reply stuck in a loop, even one that varies a token here and there. Measured on the
    held-out prompts: ordinary replies, Chinese or English, use 30 or more distinct tokens in 64."""
    return len(reply) >= LOOP_WINDOW and len(set(reply[-LOOP_WINDOW:])) <= LOOP_DISTINCT


def next_token(logits: np.ndarray, sampling: Sampling, seen: Iterable[int], rng: np.random.Generator,
               reply: list[int] = ()) -> int:
    """Pick one token from the last position's logits (`seen`: prompt and reply so far)."""
    logits = logits.astype(np.float64)  # a copy: penalties must not touch the session's buffer
    banned = repeating(list(reply), sampling.no_repeat_ngram)
    if banned:
        logits[banned] = -np.inf
    if sampling.repetition_penalty != 1.0:
        seen = np.fromiter(set(seen), dtype=np.int64)
        # As in transformers: shrink positive logits, push negative ones further down.
        values = logits[seen]
        logits[seen] = np.where(values > 0, values / sampling.repetition_penalty,
                                values * sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.size:
        cutoff = np.partition(logits, -sampling.top_k)[-sampling.top_k]
        logits[logits < cutoff] = -np.inf
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[:int(np.searchsorted(cumulative, sampling.top_p)) + 1]  # smallest set reaching top_p
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


class TextStream:
    """Turns tokens into text pieces as they arrive. A multi-byte character split
    across tokens decodes to U+FFFD until its last byte arrives, so text is held
    back until it decodes cleanly; the pieces concatenate to the final text.
    Tokens between `think` = (start id, end id) (Qwen3's reasoning) are never shown."""

    def __init__(self, tokenizer, think: tuple[int, int] | None = None):
        self.tokenizer, self.think = tokenizer, think
        self.visible: list[int] = []
        self.thinking = self.thought = False
        self.shown = ""

    def push(self, token: int) -> str:
        if self.think and token == self.think[0]:
            self.thinking = True
        elif self.think and token == self.think[1]:
            self.thinking, self.thought = False, True
        elif not self.thinking:
            self.visible.append(token)
            text = self.text()
            if not text.endswith("\ufffd") and text.startswith(self.shown):
                piece, self.shown = text[len(self.shown):], text
                return piece
        return ""

    def flush(self) -> str:
        """The text still held back; a character cut off by the end of generation is left out."""
        text = self.text().rstrip("\ufffd")
        piece = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown += piece
        return piece

    def text(self) -> str:
        text = self.tokenizer.decode(self.visible, skip_special_tokens=True)
        return text.lstrip() if self.thought else text  # the blank line after </think>


def generate(stepper, prompt_ids, tokenizer=None, max_new_tokens: int = 64, sampling: Sampling = GREEDY,
             stop: set[int] | None = None, on_text: Callable[[str], None] | None = None,
             should_stop: Callable[[], bool] | None = None, stream: TextStream | None = None) -> Result:
    """Generate up to `max_new_tokens` after `prompt_ids` with `stepper` (e.g. `NoCache(session)`).

    Stops at a token in `stop` (default: the tokenizer's end-of-turn tokens; the
    stop token is not returned) or when `should_stop()` turns true. With a
    tokenizer (or a `stream`), `on_text` receives the text as it is produced."""
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    if stop is None:
        stop = prompts.stop_ids(tokenizer) if tokenizer is not None else set()
    if stream is None and tokenizer is not None:
        stream = TextStream(tokenizer)
    rng = np.random.default_rng(sampling.seed)
    tokens: list[int] = []
    pieces: list[str] = []
    started = time.perf_counter()
    ttft = 0.0
    stopped_by = "max_new_tokens"
    logits = stepper.start(prompt) if max_new_tokens > 0 else None
    for _ in range(max_new_tokens):
        token = next_token(logits, sampling, [*prompt.tolist(), *tokens], rng, tokens)
        if not tokens:
            ttft = time.perf_counter() - started
        if token in stop:
            stopped_by = "end of turn"
            break
        tokens.append(token)
        if stream is not None and (piece := stream.push(token)):
            pieces.append(piece)
            if on_text:
                on_text(piece)
        if should_stop is not None and should_stop():
            stopped_by = "stop"
            break
        if sampling.no_repeat_ngram and going_round(tokens):
            stopped_by = "repetition"
            break
        if len(tokens) < max_new_tokens:
            logits = stepper.step(token)
    if stream is not None and (piece := stream.flush()):
        pieces.append(piece)
        if on_text:
            on_text(piece)
    text = "".join(pieces)
    return Result(tokens, text, len(prompt), ttft, time.perf_counter() - started, stopped_by, pieces)


def greedy_torch(model, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Exactly `new_tokens` argmax tokens from PyTorch (with its cache), no stopping."""
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                         min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=0)
    tokens = out[0, input_ids.shape[1]:].tolist()
    if len(tokens) != new_tokens:  # generate stopped on an EOS from generation_config
        raise RuntimeError("generate stopped early; pass a model whose generation_config has no EOS stop")
    return tokens


# How far a guessed token's logit must lead the runner-up for greedy_ort (greedy_eager) to
# take it from one pass. ONNX Runtime gives each position the same logits in one pass over
# the whole sequence as in the loop's pass that ends there: largest difference 0.0 (SmolLM2's
# FP32 and INT8 graphs, 6 prompts x 24 tokens, AVX-512 VNNI); 0.7% of those positions lead
# by less than this, and the loop computes them. PyTorch eager: at most 8.6e-5 (SmolLM2,
# 8 held-out prompts x 16 tokens, VNNI).
GUESS_MARGIN = 0.01


def greedy_ort(session, input_ids: np.ndarray, new_tokens: int, stop: Iterable[int] = (),
               guess=None) -> list[int]:
    """The no-cache loop's greedy tokens on `session` (notebook 02's graph): up to
    `new_tokens`, ending before a token in `stop`, as `generate(NoCache(session), ...)` gives
    them. A `guess` of those tokens (a loop under test's, PyTorch's) is checked in one pass
    over the prompt and the guess: the loop runs only from the first position that pass does
    not settle, so a right guess costs one pass instead of `new_tokens` (0.8 s against 17 s
    for 6 SmolLM2 answers of 24 tokens)."""
    loop, stop = NoCache(session), set(stop)
    prompt = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
    output = next((o for o in session.get_outputs() if o.name == "logits"), None)
    vocab = output.shape[-1] if output is not None else None
    settled, finished = _settled(loop.logits, vocab, prompt, new_tokens, stop, guess)
    if finished:
        return settled
    return settled + generate(loop, _extended(prompt, settled), max_new_tokens=new_tokens - len(settled),
                              stop=stop).tokens


def greedy_eager(model, input_ids: np.ndarray, new_tokens: int, guess=None) -> list[int]:
    """Exactly `new_tokens` argmax tokens from PyTorch recomputing the whole sequence at each
    step (the benchmark's no-cache row), no stopping. A `guess` (by default PyTorch's cached
    answer, `greedy_torch`) is checked in one pass as greedy_ort's is: 1.6 s against 24.5 s
    for 8 SmolLM2 answers of 16 tokens."""
    prompt = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)

    def logits_of(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(ids), use_cache=False).logits.numpy()

    if guess is None:
        guess = greedy_torch(model, torch.from_numpy(prompt), new_tokens)
    tokens, _ = _settled(logits_of, model.config.vocab_size, prompt, new_tokens, set(), guess)
    while len(tokens) < new_tokens:
        tokens.append(int(logits_of(_extended(prompt, tokens))[0, -1].argmax()))
    return tokens


def _extended(prompt: np.ndarray, tokens: list[int]) -> np.ndarray:
    return np.concatenate([prompt, np.asarray([tokens], np.int64).reshape(1, -1)], axis=1)


def _settled(logits_of: Callable[[np.ndarray], np.ndarray], vocab, prompt: np.ndarray, new_tokens: int,
             stop: set[int], guess) -> tuple[list[int], bool]:
    """The first tokens of the loop's answer that one pass of `logits_of` over `prompt` + `guess`
    settles (each position's best token, ahead of the runner-up by GUESS_MARGIN), and whether
    that is the whole answer."""
    if new_tokens <= 0:
        return [], True
    if (not isinstance(guess, (list, tuple)) or not isinstance(vocab, int)
            or not all(type(t) is int and 0 <= t < vocab for t in guess)):
        return [], False
    guess = list(guess)[:new_tokens]
    sequence = _extended(prompt, guess)
    logits = logits_of(sequence)[0]
    if logits.shape[0] != sequence.shape[1]:  # a graph that gives the last position only
        return [], False
    settled = []
    for row in logits[prompt.shape[1] - 1:]:  # row k: the logits that choose token k
        runner_up, best = np.partition(row, -2)[-2:]
        if best - runner_up < GUESS_MARGIN:
            return settled, False
        token = int(row.argmax())
        if token in stop:
            return settled, True
        settled.append(token)
        if len(settled) == new_tokens:
            return settled, True
        if len(settled) > len(guess) or token != guess[len(settled) - 1]:
            return settled, False  # past the guess, or where it parts: the pass settled this token too
    return settled, False
