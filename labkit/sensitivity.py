"""Which linear layers does INT8 break? A per-layer sensitivity scan (notebook 03).

Each candidate layer alone gets simulated INT8 in PyTorch (per-tensor u8
activations with calibrated ranges, per-channel s8 weights, as ONNX Runtime
computes them) and we measure how far the model's next-token distribution
moves: the KL divergence from the float model, averaged over tokens. A few
layers whose inputs carry huge outliers dominate; those keep float activations.
"""
from __future__ import annotations

import contextlib
import hashlib
import re

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .paths import cached_table, shared_path


def _linears(model: torch.nn.Module, pattern: str) -> dict[str, torch.nn.Linear]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and re.search(pattern, name)}


def input_ranges(model: torch.nn.Module, feeds: list[dict], pattern: str = "") -> dict[str, tuple[float, float]]:
    """(min, max) of each matching linear layer's input over the feeds."""
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name):
        def hook(module, args):
            low, high = ranges.get(name, (0.0, 0.0))
            ranges[name] = (min(low, args[0].min().item()), max(high, args[0].max().item()))
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in _linears(model, pattern).items()]
    try:
        with torch.no_grad():
            for feed in feeds:
                model(input_ids=torch.from_numpy(feed["input_ids"]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def fake_int8_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    scale = max(high - low, 1e-8) / 255
    zero = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 ([out, in] PyTorch layout)."""
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


@contextlib.contextmanager
def simulated_int8(model: torch.nn.Module, ranges: dict[str, tuple[float, float]], names: list[str]):
    """Within the block, the named linears compute with simulated INT8."""
    linears = _linears(model, "")
    saved, handles = {}, []
    try:
        for name in names:
            module = linears[name]
            saved[name] = module.weight.data
            module.weight.data = fake_int8_weight(module.weight.data)
            low, high = ranges[name]
            handles.append(module.register_forward_pre_hook(
                lambda m, args, low=low, high=high: (fake_int8_activation(args[0], low, high),)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, weight in saved.items():
            linears[name].weight.data = weight


def _log_probs(model: torch.nn.Module, feeds: list[dict]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [torch.log_softmax(model(input_ids=torch.from_numpy(f["input_ids"]), use_cache=False).logits[0], -1)
                for f in feeds]


def kl_from(reference: list[torch.Tensor], model: torch.nn.Module, feeds: list[dict]) -> float:
    """Mean per-token KL(reference || model)."""
    total, tokens = 0.0, 0
    for ref, out in zip(reference, _log_probs(model, feeds)):
        total += (ref.exp() * (ref - out)).sum().item()
        tokens += ref.shape[0]
    return total / tokens


def _scan_key(model: torch.nn.Module, feeds: list[dict], pattern: str, eval_feeds: int) -> str:
    digest = hashlib.blake2b(f"{pattern}|{eval_feeds}|{len(feeds)}".encode(), digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()


def scan(model: torch.nn.Module, feeds: list[dict], pattern: str = r"mlp\.down_proj$",
         eval_feeds: int = 6) -> pd.DataFrame:
    """KL of the model with one matching layer in simulated INT8, for each layer;
    ranges come from all `feeds`, the KL from every len(feeds)//eval_feeds-th one.
    Sorted most sensitive first. The result is kept in the shared directory, keyed
    by the weights and feeds themselves: the same inputs are never scanned twice (every
    submission of a class grades the same scan)."""
    saved = shared_path("sensitivity", _scan_key(model, feeds, pattern, eval_feeds) + ".csv")
    return cached_table(saved, lambda: _scan(model, feeds, pattern, eval_feeds))


def _scan(model, feeds, pattern, eval_feeds) -> pd.DataFrame:
    ranges = input_ranges(model, feeds, pattern)
    evaluate = feeds[::max(1, len(feeds) // eval_feeds)][:eval_feeds]
    reference = _log_probs(model, evaluate)
    rows = []
    for name in tqdm(list(ranges), desc="sensitivity scan", unit="layer"):
        with simulated_int8(model, ranges, [name]):
            rows.append({"layer": name, "kl": kl_from(reference, model, evaluate),
                         "input_range": ranges[name][1] - ranges[name][0]})
    return pd.DataFrame(rows).sort_values("kl", ascending=False, ignore_index=True)


def most_sensitive(table: pd.DataFrame, share: float = 0.9) -> tuple[str, ...]:
    """The fewest layers that account for `share` of the scan's total KL."""
    covered = np.cumsum(table["kl"].to_numpy()) / table["kl"].sum()
    return tuple(table["layer"][: int(np.searchsorted(covered, share)) + 1])
