"""The engines the lab is measured against in `python -m labkit bench`: onnxruntime-genai
running the fused graphs (fused.py) in its own runtime, and llama.cpp (llama-cpp-python,
optional: `pip install -e '.[peers]'` compiles it) on the bundled model.

llama.cpp runs two files. The bundled GGUF is Q4_1, and the lab's float32 model was
converted from it, so its weights are exactly the lab's. Q8_0 is quantized from that file
by llama.cpp's own quantizer: each Q4_1 block dequantized to float32 (the lab's FP32
weights) and quantized again in blocks of 32 to int8, so INT8 is compared with INT8.

Each runner: open() -> run(prompt_ids, new_tokens) -> (tokens, ttft_s, total_s). Every peer
runs in a child process (peer_process.PeerProcess): a peer that crashes, hangs or is not
installed fails its own row, with what happened, and nothing else.
"""
from __future__ import annotations

import ctypes
import importlib.util
import time
from pathlib import Path

import numpy as np

from ..gguf_convert import bundled_gguf
from ..paths import building, shared_path
from .peer_process import PeerFailed, PeerProcess

NOT_INSTALLED = "not installed (python -m labkit install-peers compiles it for this CPU: 2 minutes on 2 cores)"


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def q8_0_gguf() -> Path:
    """The bundled model as llama.cpp Q8_0, quantized once (under a second, in a child
    process like every llama.cpp call) and kept."""
    source = bundled_gguf()
    target = shared_path("gguf", source.name.replace(".Q4_1.", ".Q8_0."))
    with building(target):
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            return target
        partial = target.with_suffix(".partial")
        quantizer = PeerProcess("llama.cpp quantizer", _quantizer)
        try:
            quantizer(str(source), str(partial))
        finally:
            quantizer.close()
        partial.rename(target)
    return target


def _quantizer():
    """In the child: llama.cpp's quantizer, (source, target) -> Q8_0 written at target."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    def quantize(source: str, target: str):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True  # the source is Q4_1: dequantized to float32 first
        with suppress_stdout_stderr():  # llama.cpp prints every tensor it converts
            failed = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
        if failed:
            Path(target).unlink(missing_ok=True)
            raise PeerFailed(f"llama.cpp could not quantize {source} to Q8_0")
    return quantize


def genai_runner(folder: Path):
    """onnxruntime-genai's own generate loop on a graph folder with its genai_config.json."""
    return lambda: PeerProcess("onnxruntime-genai", _open_genai, (folder,))


def llama_cpp_runner(gguf: Path, threads: int):
    """llama.cpp's own loop on a GGUF file."""
    return lambda: PeerProcess("llama.cpp", _open_llama_cpp, (gguf, threads))


def _open_genai(folder: Path):
    """In the child: the runner."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def run(ids, new_tokens):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=ids.shape[1] + new_tokens,
                                  min_length=ids.shape[1] + new_tokens)
        started = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(ids[0].tolist())
        generator.generate_next_token()
        ttft = time.perf_counter() - started
        while not generator.is_done():
            generator.generate_next_token()
        tokens = list(generator.get_sequence(0))[ids.shape[1]:]
        return tokens, ttft, time.perf_counter() - started
    run.build = f"onnxruntime-genai {og.__version__}"
    return run


def _open_llama_cpp(gguf: Path, threads: int):
    """In the child: the runner. Its `build` names the instruction sets llama.cpp was
    compiled with, as llama.cpp reports them."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_batch=1024, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()

    def argmax() -> int:  # the last position's logits, as the ONNX loops pick them
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).argmax())

    def run(ids, new_tokens):
        llm.reset()
        started = time.perf_counter()
        llm.eval(ids[0].tolist())
        tokens = [argmax()]
        ttft = time.perf_counter() - started
        while len(tokens) < new_tokens:
            llm.eval(tokens[-1:])
            tokens.append(argmax())
        return tokens, ttft, time.perf_counter() - started
    run.build = f"llama.cpp {llama_cpp.__version__}: {compiled_features(llama_cpp.llama_print_system_info().decode())}"
    return run


def compiled_features(system_info: str) -> str:
    """"AVX2 F16C FMA" from llama_print_system_info()'s
    "CPU : SSE3 = 1 | AVX2 = 1 | ... | AMX_INT8 = 0 |": the features that are on."""
    parts = system_info.replace("CPU :", "|").split("|")
    return " ".join(p.split("=")[0].strip() for p in parts if p.strip().endswith("= 1"))
