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


SHORT_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ORT", "onnxruntime-fused": "ORT fused",
               "onnxruntime-genai": "ORT-genai"}


def failure(row) -> str | None:
    """A bench row's failure ("crashed (SIGSEGV) in a run"), None for a measured row (and for
    a table saved before rows had a status)."""
    status = row.get("status")
    return None if status is None or status != status or status == "ok" else status


def row_label(row) -> str:
    engine = SHORT_NAMES.get(row["engine"], row["engine"])  # peers such as llama.cpp keep their name
    return f"{engine}\n{row['precision'].upper()}\n{'KV cache' if row['cache'] else 'no cache'}"


def deployment_summary(table: pd.DataFrame, prompt_len: int | None = None):
    """The lab's final chart: compression ratio and decode tokens/s of every engine
    at one prompt length (default 256 tokens, else the longest measured), from
    `decode_bench.run`'s table."""
    lengths = set(table["prompt_len"])
    prompt_len = prompt_len or (256 if 256 in lengths else max(lengths))
    rows = table[table["prompt_len"] == prompt_len].copy()
    rows.index = [row_label(r) for _, r in rows.iterrows()]
    colors = ["tab:gray" if e == "pytorch" else "tab:blue" if e == "onnxruntime" and p == "fp32"
              else "tab:green" if e == "onnxruntime" else "tab:orange" if e == "onnxruntime-fused"
              else "tab:purple" for e, p in zip(rows["engine"], rows["precision"])]
    # one panel above the other: 14 engines side by side left their labels overlapping
    fig, axes = plt.subplots(2, 1, figsize=(max(10.0, 0.75 * len(rows)), 8))
    failures = [failure(r) for _, r in rows.iterrows()]
    (1 / rows["ratio"]).fillna(0).plot.bar(ax=axes[0], color=colors,
                                           title="compression vs FP32 (x, higher is smaller)")
    rows["tok_s"].fillna(0).plot.bar(ax=axes[1], color=colors,
                                     title=f"decode tokens/s at a {prompt_len}-token prompt (higher is faster)")
    # a peer that crashed, hung or is missing has no bar: its status stands in its place
    for ax, values, fmt in ((axes[0], 1 / rows["ratio"], "{:.1f}x"), (axes[1], rows["tok_s"], "{:.1f}")):
        ax.bar_label(ax.containers[0], fontsize=8, padding=2, color="black",
                     labels=[fmt.format(v) if not bad else "" for v, bad in zip(values, failures)])
        for x, bad in enumerate(failures):
            if bad:
                ax.annotate(bad, (x, 0), xytext=(0, 4), textcoords="offset points", rotation=90, fontsize=7,
                            color="tab:red", ha="center", va="bottom")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=0, labelsize=7)
        ax.margins(y=0.15)
    fig.tight_layout()
    return fig
