"""The lab's main job (`make lab`, `python -m labkit lab`): run every step that
exists, headless, and write one report.

Today: notebook 01's environment report and model check, and notebook 02's
export with its parity check; each later notebook adds its step here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import env, models, onnx_graph, parity, runtime
from .export import export_onnx
from .paths import artifact_path, onnx_dir

CHECK_PROMPT = "What is the capital of France?"


def model_check(loaded: models.LoadedModel | None = None, prompt: str = CHECK_PROMPT,
                max_new_tokens: int = 24) -> dict:
    """Answer one prompt greedily with PyTorch (loading the session's model if none
    is given): proof the model works."""
    import torch

    loaded = loaded or models.load()
    tok = loaded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
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


def run_lab(name: str | None = None, out_dir: Path | None = None) -> Path:
    """Run the lab end to end; return the report's path."""
    out_dir = Path(out_dir) if out_dir else artifact_path("report", "x").parent
    out_dir.mkdir(parents=True, exist_ok=True)

    print("== 01 environment ==", flush=True)
    report = env.environment_report()
    print(env.format_report(report), flush=True)
    (out_dir / "env.json").write_text(json.dumps(report, indent=1))

    print("\n== 01 model check ==", flush=True)
    loaded = models.load(name)
    check = model_check(loaded)
    print(f"{check['model']} ({check['params'] / 1e6:.0f} M parameters) from {check['origin']}\n"
          f"Q: {check['prompt']}\nA: {check['reply']}\n"
          f"({check['new_tokens']} tokens at {check['tok_s']} tok/s, PyTorch eager)", flush=True)

    print("\n== 02 export to ONNX ==", flush=True)
    started = time.perf_counter()
    onnx_path = export_onnx(loaded.model, onnx_dir(loaded.name))
    export_s = time.perf_counter() - started
    match = parity.check_parity(loaded.model, runtime.session(onnx_path), loaded.tokenizer)
    exported = {"path": str(onnx_path), "export_s": round(export_s, 1), "bytes": onnx_graph.file_bytes(onnx_path),
                "max_abs_logit_diff": match.max_abs_logit_diff, "greedy_match": match.greedy_match}
    graph_summary = onnx_graph.describe(onnx_path)
    print(f"{graph_summary}\nexported in {exported['export_s']} s; {match.summary()}", flush=True)

    report_md = out_dir / "report.md"
    report_md.write_text(
        "# On-device LLM lab report\n\n## 01 Environment\n\n```\n" + env.format_report(report)
        + "\n```\n\n## 01 Model check\n\n"
        + f"- model: `{check['model']}` ({check['params']:,} parameters), from `{check['origin']}`\n"
        + f"- Q: {check['prompt']}\n- A: {check['reply']}\n"
        + f"- {check['new_tokens']} new tokens at {check['tok_s']} tok/s (PyTorch eager, greedy)\n"
        + "\n## 02 Export to ONNX\n\n```\n" + graph_summary + "\n```\n\n"
        + f"- exported in {exported['export_s']} s to `{onnx_path}`\n- parity: {match.summary()}\n")
    (out_dir / "model_check.json").write_text(json.dumps(check, indent=1))
    (out_dir / "export.json").write_text(json.dumps(exported, indent=1))
    print(f"\nWrote {report_md}\n      {out_dir / 'env.json'}\n      {out_dir / 'model_check.json'}\n"
          f"      {out_dir / 'export.json'}")
    return report_md
