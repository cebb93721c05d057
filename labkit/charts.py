"""The lab's charts: built with pandas and matplotlib, labelled, values on bars."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def _label_bars(ax, fmt: str) -> None:
    for container in ax.containers:
        ax.bar_label(container, fmt=fmt, fontsize=8, padding=2)


def sensitivity(table: pd.DataFrame, chosen: tuple[str, ...] = ()):
    """KL divergence per layer from the scan, chosen layers highlighted."""
    short = table["layer"].str.replace("model.layers.", "L", regex=False).str.replace(".mlp.", " ", regex=False)
    colors = ["tab:red" if layer in chosen else "tab:blue" for layer in table["layer"]]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.bar(short, table["kl"], color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("KL from FP32 (log)")
    ax.set_title("INT8 damage of each layer alone (red: kept with float activations)")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.tight_layout()
    return fig


def quant_comparison(table: pd.DataFrame):
    """Size, perplexity and speed of each variant in `quality.compare`'s table."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    table["MB"].plot.bar(ax=axes[0], color="tab:gray", title="file size (MB)")
    _label_bars(axes[0], "%.0f")
    table[["ppl_en", "ppl_zh"]].plot.bar(ax=axes[1], title="held-out perplexity (lower is better)")
    _label_bars(axes[1], "%.1f")
    table["tok_s"].plot.bar(ax=axes[2], color="tab:green", title="no-cache tokens/s (higher is better)")
    _label_bars(axes[2], "%.1f")
    for ax in axes:
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=0)
        ax.margins(y=0.15)
    fig.tight_layout()
    return fig
