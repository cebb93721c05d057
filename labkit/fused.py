"""The fused KV graph: each layer a handful of ONNX Runtime kernels instead of dozens of
small operators (notebook 05's "why is llama.cpp faster?").

The graph students export (`export_kv`) spells every step out: the RMSNorm arithmetic,
the rotary embedding's Slice/Neg/Concat, the cache's Concat, attention as MatMul and
Softmax. Profiled on SmolLM2 at a 256-token past (2 threads, AVX-512 VNNI), one decode
step runs 1,914 kernels, and 38% of their time is outside MatMul (Concat alone 9%). The
fused graph runs 309: per layer two `SkipSimplifiedLayerNormalization`, one
`GroupQueryAttention` (rotary embedding, cache append and attention in one kernel) and the
linear layers with q/k/v and gate/up packed into one product each.

Built by onnxruntime-genai's model builder, the ecosystem's tool for exactly this, from
the same float weights the lab exports. onnxscript's rewriter (`optimize_for_ort`) was
measured first on the lab's own graph: it fuses the norms, but no rotary embedding and no
attention with the lab's grouped attention (with transformers' SDPA: 21 of 30 layers to
MultiHeadAttention, still no GroupQueryAttention), so it does not give the decode kernel
that matters. The builder's precisions:

    fused-fp32   float32 weights
    fused-int8   8-bit MatMulNBits, blocks of 64, accuracy_level 4: int8 activations
                 quantized per block at run time, llama.cpp Q8_0's arithmetic over blocks
                 twice as long; the embedding lookup reads lm_head's 8-bit weight
                 (`_share_int8_embedding`). Against blocks of 32 (Q8_0's), measured on
                 SmolLM2 (2 threads, AVX-512 VNNI, 3 alternating runs): time to first token
                 at 1024 1.26-1.38 s instead of 1.37-1.48 s (the static INT8 graph's:
                 1.30-1.36 s), decode 2-8% faster, 145.8 MB instead of 154.0, held-out
                 perplexity 24.28 / 12.79 instead of 24.69 / 12.93 (FP32: 24.49 / 12.76)
    fused-int4   4-bit MatMulNBits, blocks of 32, accuracy_level 4: llama.cpp Q4's

Every precision is built with `prune_lm_head`: lm_head runs on the last position only.
Over a 1024-token prompt it is a fifth of the multiply-adds, and only the last position
picks the next token: the fused INT8 prefill went from 1.48-1.58 s to 1.24-1.35 s
(SmolLM2, 2 threads, AVX-512 VNNI). Perplexity then reads the logits one position at a
time through the cache (`quality.session_logits`).

`GroupQueryAttention` reads and writes the cache in one preallocated buffer
(`generate.SharedKVCache`): no copy of the whole cache per token. The folder also runs
unmodified in onnxruntime-genai.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from . import onnx_weights
from .errors import LabkitError
from .onnx_graph import replace_node, set_metadata
from .paths import MODEL_FILE

PRECISIONS = {"fused-fp32": ("fp32", []), "fused-int8": ("int8", ["accuracy_level=4", "block_size=64"]),
              "fused-int4": ("int4", ["accuracy_level=4"])}
OPTIONS = ["prune_lm_head=true"]  # every precision's


def stamp(variant: str) -> tuple[str, str]:
    """The metadata written last: a graph without it did not finish, and one built with
    other options than today's is rebuilt."""
    precision, options = PRECISIONS[variant]
    return "labkit.fused", " ".join(["onnxruntime-genai builder", precision, *OPTIONS, *options])


class BuilderFailed(LabkitError, RuntimeError):
    pass


def head_dim(config) -> int:
    from .export_kv import cache_shape

    return cache_shape(config, 1, 0)[3]


def unsupported(config) -> str | None:
    """Why this model has no fused graph here, or None."""
    if head_dim(config) % 16:
        return (f"ONNX Runtime's GroupQueryAttention needs a head size that is a multiple of 16 "
                f"(this model's: {head_dim(config)})")
    return None


def _share_int8_embedding(graph_file: Path) -> None:
    """The builder shares a tied embedding with lm_head only in 4 bits (its comment:
    GatherBlockQuantized takes 4 bits), so its INT8 graph keeps the float embedding:
    113 MB of SmolLM2's 267. ONNX Runtime's GatherBlockQuantized takes 8-bit uint8 data
    too, with the same default zero point (128) as MatMulNBits, so the lookup is rewritten
    here as the builder writes it in 4 bits: Reshape lm_head's blocks to [vocab, hidden],
    GatherBlockQuantized with lm_head's scales. Graph surgery by hand: no tool does it."""
    graph = onnx.load(graph_file, load_external_data=False)
    nodes = list(graph.graph.node)
    floats = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    gather = next((n for n in nodes if n.op_type == "Gather" and n.input[0] in floats), None)
    head = next((n for n in nodes if n.op_type == "MatMulNBits" and n.output[0] == "logits"), None)
    if gather is None or head is None or len(head.input) > 3:  # lm_head with zero points: not the builder's
        return
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    if attrs["K"] % attrs["block_size"]:  # the last block is padded: the rows are not [vocab, hidden]
        return
    shape = "/model/embed_tokens/int8_shape"
    make = onnx.helper.make_node
    replace_node(graph.graph, gather, [
        make("Reshape", [head.input[1], shape], [shape + "_weight"], name="/model/embed_tokens/Reshape"),
        make("GatherBlockQuantized", [shape + "_weight", gather.input[1], head.input[2]], list(gather.output),
             name="/model/embed_tokens/GatherBlockQuantized", domain="com.microsoft", bits=8,
             block_size=attrs["block_size"], gather_axis=0, quantize_axis=1)])
    partial = graph_file.parent / ".shared"
    partial.mkdir(exist_ok=True)
    onnx_weights.save(graph, graph_file.parent, partial / MODEL_FILE,
                      added={shape: np.array([attrs["N"], attrs["K"]], np.int64)})
    for name in (MODEL_FILE, MODEL_FILE + ".data"):
        (partial / name).replace(graph_file.parent / name)
    partial.rmdir()


def _finish(graph_file: Path, head_dim: int, variant: str) -> None:
    """The builder leaves the cache's last dimension symbolic ('kv_cache_dim'); the lab's
    loops read the head size from the graph's inputs, so write it in, and stamp the graph
    finished (its proto only: the weights in model.onnx.data stay as they are)."""
    graph = onnx.load(graph_file, load_external_data=False)
    for value in [*graph.graph.input, *graph.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name.startswith(("past_key_values.", "present.")) and dims[3].dim_param:
            dims[3].Clear()
            dims[3].dim_value = head_dim
    set_metadata(graph, *stamp(variant))
    onnx.save(graph, graph_file)


def build(loaded, variant: str, out: Path) -> Path:
    """Build `variant` of `loaded`'s model into `out` with onnxruntime-genai's builder
    (about 10 s for SmolLM2-135M); returns the graph's path."""
    precision, options = PRECISIONS[variant]
    if reason := unsupported(loaded.model.config):
        raise BuilderFailed(f"no fused graph for {loaded.name}: {reason}")
    with tempfile.TemporaryDirectory(prefix="labkit-fused-") as scratch:
        source = Path(scratch) / "model"
        loaded.model.save_pretrained(source)  # the very weights the lab's own graphs hold
        loaded.tokenizer.save_pretrained(source)
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", loaded.name, "-i", str(source),
                   "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(Path(scratch) / "cache")]
        command += ["--extra_options", *OPTIONS, *options]
        # offline: with -i the builder needs nothing from the hub, and must not wait for it
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    graph_file = out / MODEL_FILE
    if done.returncode != 0 or not graph_file.is_file():
        raise BuilderFailed(f"onnxruntime-genai's model builder could not build {variant} of {loaded.name}:\n"
                            f"{done.stderr[-1500:]}\nThe lab's own KV graphs (kv-fp32, kv-int8, kv-int4) do not "
                            "need it; check that onnxruntime-genai is installed (pip install -e .).")
    if precision == "int8" and loaded.model.config.tie_word_embeddings:  # one matrix: share it
        _share_int8_embedding(graph_file)
    _finish(graph_file, head_dim(loaded.model.config), variant)
    return graph_file
