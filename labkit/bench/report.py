"""The lab's report, in the README's table shapes: `python -m labkit lab` writes all of it,
`python -m labkit bench` its benchmark part. One writer, so the two never drift apart."""
from __future__ import annotations

from pathlib import Path

from ..charts import SHORT_NAMES, deployment_summary, failure
from ..paths import artifacts_dir


def folder(out_dir: str | Path | None = None) -> Path:
    """`out_dir`, else <artifacts>/report; it exists."""
    out = Path(out_dir) if out_dir else artifacts_dir() / "report"
    out.mkdir(parents=True, exist_ok=True)
    return out


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


def engine_name(row) -> str:
    """"ORT INT8, KV cache": a bench row's engine as the README names it."""
    engine = SHORT_NAMES.get(row["engine"], row["engine"])
    return f"{engine} {row['precision'].upper()}, {'KV cache' if row['cache'] else 'no cache'}"


def bench_table(table) -> str:
    """Decode tokens/s per engine (rows) and prompt length (columns), with each file's size;
    a peer that failed shows its status in every column."""
    lengths = sorted(set(table["prompt_len"]))
    rows = []
    for _, group in table.groupby(["engine", "precision", "cache"], sort=False):
        first = group.iloc[0]
        size = megabytes(first["bytes"]) if first["bytes"] else ""
        if bad := failure(first):
            rows.append([engine_name(first), size] + [bad] * len(lengths))
            continue
        speed = dict(zip(group["prompt_len"], group["tok_s"]))
        rows.append([engine_name(first), size] + [f"{speed[n]:.2f}" for n in lengths])
    return markdown_table(["engine", "size"] + [str(n) for n in lengths], rows)


def quant_table(table) -> str:
    """`quality.compare`'s frame: size and share of FP32, held-out perplexity, greedy
    agreement, questions answered correctly and no-cache tokens/s (x the reference)."""
    reference = table["tok_s"].iloc[0]
    rows = [[label, f"{row['MB']:,.1f} MB ({row['ratio']:.1%})", f"{row['ppl_en']:.2f} / {row['ppl_zh']:.2f}",
             f"{row['agreement']:.2f}", int(row["correct"]), f"{row['tok_s']:.1f} ({row['tok_s'] / reference:.2f}x)"]
            for label, row in table.iterrows()]
    return markdown_table(["graph", "size", "perplexity en / zh", "agreement", "correct", "no-cache tokens/s"], rows)


def write_bench(table, out_dir: Path) -> list[Path]:
    """bench.csv (every column) and bench.png (the final chart) in `out_dir`."""
    csv, png = out_dir / "bench.csv", out_dir / "bench.png"
    table.to_csv(csv, index=False)
    deployment_summary(table).savefig(png, dpi=120)
    return [csv, png]
