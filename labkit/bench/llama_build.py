"""llama.cpp for the benchmark's peer rows, compiled for the CPU it runs on
(`python -m labkit install-peers`, which `make test` calls).

PyPI has no llama-cpp-python wheel, so pip compiles llama.cpp. Its default build is
`-march=native`, which on a Sapphire Rapids Xeon also compiles ggml's AMX kernels: there the
first decode segfaulted, deterministically, inside llama.cpp (the same crash is reported on
virtualised Sapphire and Granite Rapids: ggml-org/llama.cpp#20824, ollama#17249). The same
machine ran both peer tests with the AMX kernels left out. So the build names each
instruction set this CPU has, from /proc/cpuinfo, and never AMX; an AVX2-only CPU gets
AVX2, FMA and F16C and no AVX-512.

Compiled wheels are kept per build (version + flags) under ~/.cache/labkit: pip's own cache
keys a wheel by its source only, so it would hand back a wheel built with other flags.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

from ..env import cpu_flags
from ..errors import LabkitError

# ggml's CMake option -> the /proc/cpuinfo flags it compiles for (ggml-cpu/CMakeLists.txt:
# GGML_AVX512 adds -mavx512f/cd/vl/dq/bw together).
GGML_ISA = {
    "GGML_SSE42": {"sse4_2"}, "GGML_AVX": {"avx"}, "GGML_AVX2": {"avx2"}, "GGML_FMA": {"fma"},
    "GGML_F16C": {"f16c"}, "GGML_BMI2": {"bmi2"}, "GGML_AVX_VNNI": {"avx_vnni"},
    "GGML_AVX512": {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"},
    "GGML_AVX512_VBMI": {"avx512vbmi"}, "GGML_AVX512_VNNI": {"avx512_vnni"}, "GGML_AVX512_BF16": {"avx512_bf16"},
}
NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")  # the kernels that crashed, see above


class PeerBuildFailed(LabkitError, RuntimeError):
    pass


def pinned_requirement() -> str:
    """llama-cpp-python as pyproject.toml's `peers` extra pins it (the one list of dependencies)."""
    for line in importlib.metadata.requires("labkit") or []:
        if line.startswith("llama-cpp-python"):
            return line.split(";")[0].strip()
    raise PeerBuildFailed("pyproject.toml's 'peers' extra names no llama-cpp-python: reinstall labkit (make install)")


def cmake_args(flags: set[str]) -> list[str]:
    """The CMake arguments for a CPU with these /proc/cpuinfo flags."""
    # Without llama.cpp's multimodal library and its `common` utilities, neither of which the
    # Python package loads: 1 min 39 s of compiling on 2 cores instead of 3 min 31 s.
    libraries_only = importlib.resources.files("labkit.bench") / "llama_cpp_libraries_only.cmake"
    args = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF", f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={libraries_only}"]
    args += [f"-D{option}={'ON' if needs <= flags else 'OFF'}" for option, needs in GGML_ISA.items()]
    return args + [f"-D{option}=OFF" for option in NEVER]


def build_key(requirement: str, args: list[str]) -> str:
    """Names one build: the pinned version and the instruction sets (not the paths)."""
    isa = " ".join(a for a in args if a.startswith("-DGGML_"))
    return f"{requirement.split('==')[-1]}-{hashlib.sha256(isa.encode()).hexdigest()[:12]}"


def _stamp() -> Path:
    return Path(sys.prefix) / ".labkit-llama-cpp-build"


def install(log=print) -> str:
    """Install llama-cpp-python built for this CPU, unless that very build is installed.
    Returns the build's key."""
    requirement = pinned_requirement()
    args = cmake_args(cpu_flags())
    key = build_key(requirement, args)
    stamp = _stamp()
    if stamp.is_file() and stamp.read_text().strip() == key and _installed(requirement):
        log(f"llama.cpp peer: build {key} already installed")
        return key
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labkit" / "llama-cpp" / key
    wheels = sorted(cache.glob("llama_cpp_python-*.whl"))
    if not wheels:
        log(f"llama.cpp peer: compiling {requirement} for this CPU (about 2 minutes on 2 cores): "
            + " ".join(a for a in args if a.startswith("-DGGML_") and a.endswith("=ON")))
        _pip(["wheel", "--no-deps", "--no-cache-dir", "--quiet", "-w", str(cache), requirement],
             {"CMAKE_ARGS": " ".join(args)})
        wheels = sorted(cache.glob("llama_cpp_python-*.whl"))
        if not wheels:
            raise PeerBuildFailed(f"pip wrote no wheel into {cache}")
    if _installed(requirement):  # another build of the same version: pip would keep it
        _pip(["uninstall", "--yes", "--quiet", "llama-cpp-python"])
    _pip(["install", "--quiet", "--no-warn-conflicts", str(wheels[-1])])
    stamp.write_text(key + "\n")
    log(f"llama.cpp peer: build {key} installed from {wheels[-1]}")
    return key


def _installed(requirement: str) -> bool:
    try:
        return importlib.metadata.version("llama-cpp-python") == requirement.split("==")[-1]
    except importlib.metadata.PackageNotFoundError:
        return False


def _pip(arguments: list[str], extra_env: dict | None = None) -> None:
    command = [sys.executable, "-m", "pip", *arguments]
    if subprocess.call(command, env={**os.environ, **(extra_env or {})}) != 0:
        raise PeerBuildFailed(f"failed: {' '.join(command)} (the output above says why; a C/C++ compiler "
                              "and cmake are needed: apt-get install build-essential cmake)")
