"""PyTorch -> ONNX for the graph with a KV cache (notebook 05).

One graph serves prefill (past length 0) and decode, in the naming the ONNX
ecosystem's tools use (onnxruntime-genai, Optimum):

    inputs   input_ids, attention_mask, position_ids          int64 [batch, sequence]
                                                               (the mask: [batch, total_sequence])
             past_key_values.{i}.key / .value                  float32 [batch, kv_heads, past_sequence, head_dim]
    outputs  logits                                            float32 [batch, sequence, vocab]
             present.{i}.key / .value                          float32 [batch, kv_heads, total_sequence, head_dim]

`write_genai_config` writes the `genai_config.json` with which onnxruntime-genai
runs the folder unmodified.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch

from . import attention
from .export import export_with
from .patches import export_patches
from .onnx_graph import set_metadata
from .paths import MODEL_FILE

GENAI_CONFIG = "genai_config.json"
PAST, PRESENT = "past_key_values.", "present."  # the cache's names: PAST + "{layer}.key" / ".value"


def input_names(layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"{PAST}{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def output_names(layers: int) -> list[str]:
    return ["logits"] + [f"{PRESENT}{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def token_feed(ids: np.ndarray, past_length: int) -> dict[str, np.ndarray]:
    """The graph's three int64 inputs for a call that feeds `ids` ([1, n]) after
    `past_length` cached tokens: the mask covers past and new, positions count on."""
    total = past_length + ids.shape[1]
    return {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
            "position_ids": np.arange(past_length, total, dtype=np.int64)[None]}


def empty_past(kv_heads: int, head_dim: int) -> np.ndarray:
    """One layer's key (or value) before the first token: length 0."""
    return np.zeros((1, kv_heads, 0, head_dim), np.float32)


class KVWrapper(torch.nn.Module):
    """Plain tensors in and out: the cache goes in as 2 x layers tensors and comes
    back as the same number, one position longer per new token."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def cache_shape(config, batch: int, length: int) -> tuple[int, int, int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return batch, config.num_key_value_heads, length, head_dim


def example_inputs(config, batch: int = 2, sequence: int = 4, past: int = 3) -> tuple:
    """Tracing inputs; every dynamic size above 1, so torch.export keeps it symbolic."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, sequence), generator=generator)
    mask = torch.ones(batch, past + sequence, dtype=torch.int64)
    positions = torch.arange(past, past + sequence).expand(batch, sequence).contiguous()
    cache = [torch.randn(cache_shape(config, batch, past), generator=generator)
             for _ in range(2 * config.num_hidden_layers)]
    return ids, mask, positions, cache


def dynamic_shapes(layers: int) -> tuple:
    """Named dims: the exporter keeps these names in the ONNX graph."""
    tokens = {0: "batch", 1: "sequence"}
    return tokens, {0: "batch", 1: "total_sequence"}, tokens, [{0: "batch", 2: "past_sequence"}] * (2 * layers)


def _finish(graph: onnx.ModelProto) -> None:
    """Name the present length as tools expect ('total_sequence', where the exporter
    writes 'past_sequence + sequence'), and stamp the attention the graph was exported with."""
    for output in graph.graph.output:
        if output.name.startswith(PRESENT):
            output.type.tensor_type.shape.dim[2].dim_param = "total_sequence"
    set_metadata(graph, attention.METADATA_KEY, attention.NAME)


def _kv_call(layers: int, names: tuple[list[str], list[str]]):
    """The `torch.onnx.export` call for the KV graph: its names and named dims. Not
    `export.torch_export` (notebook 02's answer, off limits in the grader's child, where a
    student's KV wrapper is exported with this)."""
    def call(wrapper, example, onnx_file):
        with export_patches():
            program = torch.onnx.export(wrapper, example, dynamo=True, input_names=names[0], output_names=names[1],
                                        dynamic_shapes=dynamic_shapes(layers), optimize=True, verbose=False)
        program.save(str(onnx_file), external_data=True)
    return call


def export_kv(model: torch.nn.Module, out_dir: str | Path, tokenizer=None, wrapper: torch.nn.Module | None = None,
              names: tuple[list[str], list[str]] | None = None) -> Path:
    """Export the KV-cache graph to `out_dir/model.onnx` (+ `.data`) with `wrapper` (default
    `KVWrapper`; notebook 05's task is the student's own); with a tokenizer, also its files
    and `genai_config.json`, so the folder runs in onnxruntime-genai. `names`: (inputs,
    outputs), by default `input_names` and `output_names` (the grader passes its own: those
    two are a task's answer, off limits in its child)."""
    layers = model.config.num_hidden_layers
    names = names or (input_names(layers), output_names(layers))
    with attention.grouped(model):  # decode steps bit-identical to whole-sequence rows; see attention.py
        path = export_with(_kv_call(layers, names), model, out_dir, wrapper=wrapper or KVWrapper(model),
                           example=example_inputs(model.config), finish=_finish)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
        write_genai_config(model.config, tokenizer, out_dir)
    return path


def write_genai_config(config, tokenizer, out_dir: str | Path, context_length: int | None = None) -> Path:
    """onnxruntime-genai's description of the graph: its names, shapes and stop tokens."""
    from .prompts import stop_ids

    layers = config.num_hidden_layers
    context = context_length or getattr(config, "max_position_embeddings", 2048)
    model_type = config.model_type  # "llama" (SmolLM2) or "qwen3"
    genai = {
        "model": {
            "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.bos_token_id,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": cache_shape(config, 1, 0)[3],
                "hidden_size": config.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": PAST + "%d.key",
                           "past_value_names": PAST + "%d.value"},
                "outputs": {"logits": "logits", "present_key_names": PRESENT + "%d.key",
                            "present_value_names": PRESENT + "%d.value"},
                "num_attention_heads": config.num_attention_heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": config.num_key_value_heads,
            },
            "eos_token_id": sorted(stop_ids(tokenizer)),
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "type": model_type,
            "vocab_size": config.vocab_size,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
    path = Path(out_dir) / GENAI_CONFIG
    path.write_text(json.dumps(genai, indent=1))
    return path
