"""The lab's prompts, in one place: a chat turn rendered to token ids, the chat's system
prompt, the calibration set, the held-out set, and a prompt of exactly N tokens.

The calibration and held-out sets are disjoint (a test says so): the held-out prompts and
text measure quality on what calibration never saw.
"""
from __future__ import annotations

import json
from importlib import resources

import numpy as np


# The chat's system prompt (chat.Chat's default; the graded loops and the quality measures
# render a bare user turn, `chat_ids`). Without a system turn SmolLM2's template puts in
# its own identity line, under which FP32 itself prefers "The capital of France is Paris"
# to "L'Étoile, ..." by only 0.08 logits, a toss any INT8 rounding turns; asked for direct
# answers it prefers it by 0.92, and FP32 answers 15 of 22 questions with a known answer
# against 12 (the held-out set and 16 others; README, "The chat's system prompt and
# repetition guard").
CHAT_SYSTEM = "You are a helpful assistant. Answer questions directly and briefly."


def _data(name: str) -> dict:
    return json.loads(resources.files("labkit").joinpath(f"data/{name}.json").read_text("utf-8"))


def calibration_prompts() -> list[str]:
    """The shipped calibration prompts (English and Chinese, varied tasks)."""
    return _data("calibration_prompts")["prompts"]


def heldout() -> dict:
    """Held-out prompts (with the words a correct answer contains) and text, never used for
    calibration."""
    return _data("heldout")


def render(tokenizer, messages: list[dict], **template) -> list[int]:
    """`messages` ({"role", "content"} dicts) in the model's own chat template, ending where
    the assistant's reply begins. `template`: the template's own switches (Qwen3's
    `enable_thinking`)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                         **template)["input_ids"]


def with_system(system: str | None, messages: list[dict]) -> list[dict]:
    """`messages` opened by a system turn, or as they are when `system` is None or ""."""
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


def chat_ids(tokenizer, prompt: str, max_tokens: int | None = None, system: str | None = None) -> np.ndarray:
    """`prompt` as one user turn (after the system turn `system`, if one is given), ready for
    the assistant's reply: int64 [1, tokens], at most `max_tokens` of them."""
    messages = with_system(system, [{"role": "user", "content": prompt}])
    return np.asarray([render(tokenizer, messages)[:max_tokens]], dtype=np.int64)


def prompt_of(tokenizer, length: int) -> np.ndarray:
    """`length` tokens of held-out text (repeated if short): int64 [1, length]."""
    data = heldout()
    ids = tokenizer(data["text_en"] + "\n" + data["text_zh"], add_special_tokens=False)["input_ids"]
    return np.asarray([(ids * (length // len(ids) + 1))[:length]], np.int64)


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_ids(tokenizer) -> set[int]:
    """End-of-sequence and the chat template's end-of-turn tokens."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    return ids | {vocab[t] for t in END_OF_TURN if t in vocab}
