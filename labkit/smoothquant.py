"""SmoothQuant scale migration on the exported float graph (Xiao et al., 2023).

A few input channels of a linear layer carry activations 100x larger than the
rest, so one per-tensor int8 scale wastes most of its 256 levels on them.
Dividing channel c of the activation by s_c and multiplying row c of the
weight by s_c leaves the product unchanged and moves part of the range into
the weight, which is quantized per output channel and copes with it. The
division is folded into the operator that produces the activation (the RMSNorm
weight, or up_proj's columns for down_proj), so the graph gains no node.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from . import onnx_weights

Ranges = dict[str, tuple[np.ndarray, np.ndarray]]  # tensor -> per-channel (low, high)
Factors = dict[str, list[tuple[int, np.ndarray]]]  # weight -> [(axis, multiply by)]; up_proj gets two

# (producer of the activation, axis of the producer's weight to divide, consumers)
_GROUPS = (
    ("input_layernorm", 0, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", 0, ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", 1, ("mlp.down_proj",)),
)


def smooth(model: onnx.ModelProto, src_dir: str | Path, ranges: Ranges, alpha: float,
           skip: set[str] = frozenset()) -> tuple[Factors, Ranges]:
    """Plan the migration: returns the factors to multiply weights by, and the
    activation ranges after smoothing. Linears named in `skip` (e.g. ``model.layers.2.mlp.down_proj``)
    keep their scales."""
    weights = onnx_weights.initializers(model)
    matmul_input = {n.input[1]: n.input[0] for n in model.graph.node if n.op_type == "MatMul"}
    layers = sorted({int(m.group(1)) for w in weights if (m := re.match(r"model\.layers\.(\d+)\.", w))})
    factors: Factors = {}
    smoothed = dict(ranges)
    for i in layers:
        for producer, axis, consumers in _GROUPS:
            names = [f"model.layers.{i}.{c}.weight" for c in consumers]
            if any(f"model.layers.{i}.{c}" in skip for c in consumers) or names[0] not in matmul_input:
                continue
            activation = matmul_input[names[0]]
            target = f"model.layers.{i}.{producer}.weight"
            if axis == 0:
                target = _own_norm_weight(model, weights, activation, target)
                if target is None:
                    continue
            low, high = ranges[activation]
            x_amax = np.maximum(np.abs(low), np.abs(high))
            w_amax = np.max([np.abs(onnx_weights.read(weights[n], src_dir)).max(axis=1) for n in names], axis=0)
            scale = (np.maximum(x_amax, 1e-5) ** alpha / np.maximum(w_amax, 1e-5) ** (1 - alpha))
            scale = np.maximum(scale, 1e-5).astype(np.float32)
            factors.setdefault(target, []).append((axis, 1 / scale))
            for n in names:
                factors.setdefault(n, []).append((0, scale))
            smoothed[activation] = (low / scale, high / scale)
    return factors, smoothed


def _own_norm_weight(model: onnx.ModelProto, weights: dict, activation: str, name: str) -> str | None:
    """Make the norm Mul that produces `activation` read a weight called `name` that no
    other node uses. The exporter merges equal initializers: in a randomly initialised
    model every norm weight is all ones and all norms share one tensor, which must not
    be scaled for one layer. Returns the weight's name; None when the producer is
    not a Mul by a weight, and the group is left unsmoothed."""
    node = next((n for n in model.graph.node if activation in n.output), None)
    if node is None or node.op_type != "Mul":
        return None
    weight = next((x for x in node.input if x in weights), None)
    if weight is None:
        return None
    users = sum(weight in n.input for n in model.graph.node)
    if weight != name or users > 1:
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[weight])  # external data: same bytes, new name
        copy.name = name + ".smoothed" if name in weights else name
        model.graph.initializer.append(copy)
        weights[copy.name] = copy
        node.input[list(node.input).index(weight)] = copy.name
        return copy.name
    return weight


def apply(factors: Factors):
    """A `replace` function for `onnx_weights.save` that applies the planned factors."""
    def replace(name: str, value: np.ndarray) -> np.ndarray | None:
        if name not in factors:
            return None
        value = np.array(value)
        for axis, factor in factors[name]:
            shape = [1] * value.ndim
            shape[axis] = -1
            value *= factor.reshape(shape)
        return value
    return replace
