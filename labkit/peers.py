"""The engines the lab is measured against in `python -m labkit bench`: onnxruntime-genai
running the fused graphs (fused.py) in its own runtime, and llama.cpp (llama-cpp-python,
optional: `pip install -e '.[peers]'` compiles it) on the bundled model.

llama.cpp runs two files. The bundled GGUF is Q4_1, and the lab's float32 model was
converted from it, so its weights are exactly the lab's. Q8_0 is quantized from that file
by llama.cpp's own quantizer: each Q4_1 block dequantized to float32 (the lab's FP32
weights) and quantized again in blocks of 32 to int8, so INT8 is compared with INT8.

Each runner: open() -> run(prompt_ids, new_tokens) -> (tokens, ttft_s, total_s).
"""
from __future__ import annotations

import ctypes
import importlib.util
import time
from pathlib import Path

import numpy as np

from .errors import LabkitError
from .gguf_convert import bundled_gguf
from .paths import building, shared_path


class PeerFailed(LabkitError, RuntimeError):
    pass


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def q8_0_gguf() -> Path:
    """The bundled model as llama.cpp Q8_0, quantized once (under a second) and kept."""
    import llama_cpp

    source = bundled_gguf()
    target = shared_path("gguf", source.name.replace(".Q4_1.", ".Q8_0."))
    with building(target):
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            return target
        partial = target.with_suffix(".partial")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True  # the source is Q4_1: dequantized to float32 first
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            partial.unlink(missing_ok=True)
            raise PeerFailed(f"llama.cpp could not quantize {source} to Q8_0")
        partial.rename(target)
    return target


def genai_runner(folder: Path):
    """onnxruntime-genai's own generate loop on a graph folder with its genai_config.json."""
    def open_():
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
        return run
    return open_


def llama_cpp_runner(gguf: Path, threads: int):
    def open_():
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
        return run
    return open_
