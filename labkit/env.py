"""The environment report of notebook 01 and `python -m labkit env`.

`environment_report()` returns plain data (tests and graders read it);
`format_report()` turns it into the text a student reads.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
from pathlib import Path

from .messages import say
from .paths import artifacts_dir

GB = 1024**3
# The handbook's advice for Qwen3-1.7B: the FP32 export briefly needs a lot of RAM.
RECOMMENDED = {"cores": 4, "ram_total_gb": 16.0, "disk_free_gb": 20.0}
# Instruction sets ONNX Runtime's CPU kernels use, in /proc/cpuinfo spelling.
CPU_FEATURES = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512bw": "AVX-512 BW",
    "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_tile": "AMX", "amx_int8": "AMX-INT8",
}

# Instructions that multiply int8 by int8 with 32-bit sums.
INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8"}


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
        model = m.group(1).strip()
    if m := re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M):
        flags = set(m.group(1).split())
    return model, flags


def cpu_flags() -> set[str]:
    """This CPU's feature flags as /proc/cpuinfo spells them (empty where it has none)."""
    return _cpuinfo()[1]


def int8_products_saturate() -> bool:
    """True on x86 CPUs without VNNI or AMX. There ONNX Runtime's u8 x s8 kernel adds pairs
    of products in 16 bits (vpmaddubsw), which saturates when both are large. Measured on an
    AVX2-only EPYC, the tiny Qwen3's INT8 logits were off by 9.1% with s8 weights, 2.1% with
    7-bit s8 weights (`reduce_range`) and 1.5% with u8 weights."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # Arm's dot-product instructions sum in 32 bits
    return not INT8_DOT & cpu_flags()


def cpu_summary() -> str:
    """"AMD EPYC (AVX2, FMA, AVX-512 VNNI), 2 cores": the machine a figure came from."""
    model, flags = _cpuinfo()
    isa = [name for flag, name in CPU_FEATURES.items() if flag in flags]
    return f"{model} ({', '.join(isa) or 'no AVX2'}), {len(os.sched_getaffinity(0))} cores"


def int8_kernel_note() -> str:
    """What this CPU means for INT8, in a sentence a student reads in notebook 03 and the chat
    box (Chinese first). Figures: the README's quantization table, VNNI vs AVX2-only EPYC."""
    if int8_products_saturate():
        return say("env.int8_avx2", sep=" ")
    return say("env.int8_fast", sep=" ")


def package_versions() -> dict[str, dict]:
    """Each dependency pinned in pyproject.toml: required spec, installed version, match."""
    from packaging.requirements import Requirement

    rows = {}
    for line in importlib.metadata.requires("labkit") or []:
        req = Requirement(line)
        if req.marker is not None:  # extras such as [test]
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        version = (installed or "").split("+")[0]  # 2.13.0+cpu satisfies ==2.13.0
        rows[req.name] = {"required": str(req.specifier), "installed": installed,
                          "ok": installed is not None and req.specifier.contains(version, prereleases=True)}
    return rows


def _ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def environment_report() -> dict:
    import psutil

    cpu_model, flags = _cpuinfo()
    mem = psutil.virtual_memory()
    where = artifacts_dir()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu_model": cpu_model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_flags": sorted(f for f in CPU_FEATURES if f in flags),
        "ram_total_gb": round(mem.total / GB, 2),
        "ram_available_gb": round(mem.available / GB, 2),
        "artifacts_dir": str(where),
        "disk_free_gb": round(shutil.disk_usage(where).free / GB, 2),
        "onnxruntime_providers": _ort_providers(),
    }
    report["advice"] = advice(report)
    return report


def advice(report: dict) -> list[str]:
    """What will be slow or fail on this machine, and what to do about it."""
    notes = []
    if report["cores"] < RECOMMENDED["cores"]:
        notes.append(f"{report['cores']} cores (4+ recommended): export and quantization of Qwen3-1.7B "
                     "take several minutes; the bundled SmolLM2-135M keeps every step under a minute.")
    if report["ram_total_gb"] < RECOMMENDED["ram_total_gb"]:
        notes.append(f"{report['ram_total_gb']:.0f} GB RAM (16 GB recommended): the FP32 export of "
                     "Qwen3-1.7B may be killed for lack of memory; use LABKIT_MODEL=smollm2-135m.")
    if report["disk_free_gb"] < RECOMMENDED["disk_free_gb"]:
        notes.append(f"{report['disk_free_gb']:.0f} GB free in {report['artifacts_dir']} (20 GB "
                     "recommended for Qwen3-1.7B's FP32 + INT8 files): free space or point "
                     "LABKIT_ARTIFACTS at a larger disk.")
    if "avx2" not in report["cpu_flags"]:
        notes.append("No AVX2: ONNX Runtime falls back to slow kernels; INT8 may not beat FP32.")
    elif not INT8_DOT & set(report["cpu_flags"]):
        notes.append("No VNNI/AMX: INT8 matrix products run on AVX2, so INT8 gains come mostly "
                     "from reading 4x fewer weight bytes, not from faster arithmetic, and INT8 "
                     "weights are stored as u8, whose kernel cannot overflow AVX2's 16-bit sums.")
    wrong = [f"{n} {r['installed'] or 'missing'} (want {r['required']})"
             for n, r in report["packages"].items() if not r["ok"]]
    if wrong:
        notes.append("Packages differ from the pinned set: " + "; ".join(wrong)
                     + ". Reinstall with `make install` (or pip install -e .).")
    return notes


def format_report(report: dict) -> str:
    flags = set(report["cpu_flags"])
    lines = [
        f"Python        {report['python']}  ({report['platform']})",
        f"CPU           {report['cpu_model']}",
        f"Cores         {report['cores']} usable ({report['physical_cores']} physical)",
        "Instructions  " + "  ".join(f"{label} {'yes' if f in flags else 'no'}"
                                     for f, label in CPU_FEATURES.items()),
        f"RAM           {report['ram_total_gb']:.1f} GB total, {report['ram_available_gb']:.1f} GB available",
        f"Disk          {report['disk_free_gb']:.1f} GB free in {report['artifacts_dir']}",
        f"ONNX Runtime  providers: {', '.join(report['onnxruntime_providers']) or 'not installed'}",
        "Packages",
    ]
    for name, row in report["packages"].items():
        mark = "ok " if row["ok"] else "!! "
        lines.append(f"  {mark}{name:<16} {row['installed'] or 'missing':<14} pinned {row['required']}")
    if report["advice"]:
        lines.append("Advice")
        lines += [f"  - {note}" for note in report["advice"]]
    else:
        lines.append("This machine meets the lab's recommendations.")
    return "\n".join(lines)
