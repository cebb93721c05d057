"""The graders' checks. Each raises AssertionError with a message that tells the
student what is wrong and what to do; graded cells call one check each."""
from __future__ import annotations

from pathlib import Path

from . import onnx_graph
from .messages import say
from .parity import LOGIT_TOLERANCE, Parity

SIZE_TOLERANCE = 0.05


def input_names(path: str | Path, expected: list[str]) -> None:
    names = [v["name"] for v in onnx_graph.graph_io(path)["inputs"]]
    assert names == expected, say("graph.input_names", names=names, expected=expected)


def input_dtypes(path: str | Path, dtype: str = "int64") -> None:
    wrong = {v["name"]: v["dtype"] for v in onnx_graph.graph_io(path)["inputs"] if v["dtype"] != dtype}
    assert not wrong, say("graph.input_dtypes", dtype=dtype, wrong=wrong)


def symbolic_dims(path: str | Path, axes: tuple[int, ...] = (0, 1)) -> None:
    """Every input's batch (0) and sequence (1) dims must be named, not fixed numbers."""
    for v in onnx_graph.graph_io(path)["inputs"]:
        for axis in axes:
            dim = v["shape"][axis] if axis < len(v["shape"]) else None
            assert isinstance(dim, str), say("graph.fixed_dim", name=v["name"], dim=dim, axis=axis)


def logits_output(path: str | Path, vocab_size: int) -> None:
    outputs = onnx_graph.graph_io(path)["outputs"]
    names = [o["name"] for o in outputs]
    assert names == ["logits"], say("graph.logits_only", names=names)
    logits = outputs[0]
    assert logits["dtype"] == "float32", say("graph.logits_dtype", dtype=logits["dtype"])
    assert len(logits["shape"]) == 3 and logits["shape"][2] == vocab_size, (
        say("graph.logits_shape", shape=logits["shape"], vocab=vocab_size))


def fp32_size(path: str | Path, params: int, expected: int | None = None) -> None:
    """Catches a duplicated tied embedding (too big) and an FP16 export (half size). `expected`:
    the bytes of a correct export, where page alignment is not negligible (a toy model)."""
    size, expected = onnx_graph.file_bytes(path), expected or 4 * params
    ratio = size / expected
    assert abs(ratio - 1) <= SIZE_TOLERANCE, say("graph.size", mb=size / 1e6, ratio=ratio, params=params,
                                                 expected_mb=expected / 1e6)


def one_data_file(path: str | Path) -> None:
    """The weights sit in one external-data file beside the graph, named after it."""
    files = onnx_graph.external_files(onnx_graph.load_graph(path))
    expected = Path(path).name + ".data"
    assert files == [expected], say("graph.one_data_file", files=files or [Path(path).name], expected=expected)


def mask_patch(seen: dict[str, bool]) -> None:
    """`seen`: what `mask_patch.observe(patch)` saw the patch do."""
    assert seen.get("replaced"), say("patch.not_replaced")
    assert seen.get("restored"), say("patch.not_restored")
    assert seen.get("error_passed"), say("patch.error_swallowed")
    assert seen.get("restored_after_error"), say("patch.not_restored_after_error")


def logits_close(result: Parity) -> None:
    assert result.max_abs_logit_diff <= LOGIT_TOLERANCE, (
        say("parity.logits", diff=result.max_abs_logit_diff, limit=LOGIT_TOLERANCE))


def greedy_identical(result: Parity) -> None:
    for i, (a, b) in enumerate(zip(result.tokens_torch, result.tokens_onnx)):
        first = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert first is None, say("parity.greedy", i=i, first=first, a=a[first], b=b[first])


def quantized_model(path: str | Path) -> None:
    """A valid ONNX file whose weights are mostly int8 and whose graph has quantized operators."""
    import onnx

    from .quantize import QUANTIZED_OPS, int8_weight_bytes

    onnx.checker.check_model(str(path))
    ops = set(onnx_graph.op_histogram(path)) & QUANTIZED_OPS
    assert ops, say("quant.no_ops", name=Path(path).name)
    share = int8_weight_bytes(path) / onnx_graph.file_bytes(path)
    assert share > 0.5, say("quant.float_weights", share=share)


STATIC_SHARE = 0.5  # the lab's recipe quantizes the activations of 173 of SmolLM2's 210 decoder linears


def static_share(path: str | Path, at_least: float = STATIC_SHARE) -> float:
    """The share of decoder linears (MatMuls with a weight, in model.layers) whose input
    activation is quantized too, not only the weight: static INT8 in fact."""
    from .quantize import static_linears

    quantized, linears = static_linears(path)
    share = quantized / max(linears, 1)
    assert share >= at_least, say("quant.static_share", quantized=quantized, linears=linears, share=share,
                                  at_least=at_least)
    return share


def quantize_call_types(path: str | Path, weight_type: str) -> None:
    """The quantize call's choices, read from its graph: QDQ, u8 activations, `weight_type`
    ("s8" or "u8") weights with one scale per output channel."""
    from .quantize import qdq_types

    found = qdq_types(path)
    wanted = {"s8": "int8", "u8": "uint8"}[weight_type]
    assert found["weights"], say("quant.not_qdq")
    assert found["activations"] == {"uint8"}, say("quant.activations", found=sorted(found["activations"]))
    assert found["weights"] == {wanted}, say("quant.weights", found=sorted(found["weights"]), wanted=wanted,
                                             weight_type=weight_type)
    assert found["weight_scales"] == {1}, say("quant.per_tensor")


def size_ratio(path: str | Path, fp32_path: str | Path, at_most: float) -> float:
    ratio = onnx_graph.file_bytes(path) / onnx_graph.file_bytes(fp32_path)
    assert ratio <= at_most, say("quant.size_ratio", ratio=ratio, at_most=at_most)
    return ratio


def follows_fp32(shares: dict[str, float], at_least: float) -> None:
    """`shares`: quality.next_token_agreement of the quantized model with FP32."""
    low = {lang: share for lang, share in shares.items() if share < at_least}
    assert not low, say("quant.follows_fp32", at_least=at_least,
                        low=", ".join(f"{share:.0%} ({lang})" for lang, share in low.items()))


def same_first_tokens(tokens: list[int], reference: list[int], first: int) -> None:
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    assert same >= first, say("quant.first_tokens", same=same, first=first)


def same_tokens(tokens, reference: list[int], tokenizer, prompt: str) -> None:
    """The student's generated tokens must equal the reference loop's, exactly."""
    assert isinstance(tokens, (list, tuple)) and all(isinstance(t, int) for t in tokens), (
        say("loop.not_ints", kind=type(tokens).__name__))
    if list(tokens) == reference:
        return
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    assert False, say("loop.diverges", prompt=prompt, first=first, total=len(reference), n=len(tokens),
                      yours=tokenizer.decode(list(tokens)[:first + 3]),
                      reference=tokenizer.decode(reference[:first + 3]))


def loop_matches_reference(loop, session, tokenizer, prompts: list[str], new_tokens: int, reference=None) -> None:
    """`loop(session, prompt_ids, max_new_tokens, stop_ids)` against labkit's no-cache loop on
    `reference` (default `session`; notebook 05: the no-cache graph beside the loop's KV graph)."""
    from . import generate
    from .prompts import chat_ids, stop_ids

    stop = stop_ids(tokenizer)
    for prompt in prompts:
        ids = chat_ids(tokenizer, prompt)
        tokens = loop(session, ids, new_tokens, stop)
        expected = generate.greedy_ort(session if reference is None else reference, ids, new_tokens, stop, guess=tokens)
        same_tokens(tokens, expected, tokenizer, prompt)


class ScriptedSession:
    """Stands in for an ONNX Runtime session of the no-cache graph: the argmax of the
    last position is `script[k]` once k tokens follow the prompt."""

    def __init__(self, script: list[int], vocab: int, prompt_len: int):
        self.script, self.vocab, self.prompt_len = script, vocab, prompt_len

    def get_inputs(self):
        return [type("Input", (), {"name": n})() for n in ("input_ids", "attention_mask")]

    def run(self, output_names, feed):
        import numpy as np

        length = feed["input_ids"].shape[1]
        logits = np.zeros((1, length, self.vocab), np.float32)
        logits[0, -1, self.script[min(length - self.prompt_len, len(self.script) - 1)]] = 1.0
        return [logits]


def stops_at_end_of_turn(loop, tokenizer) -> None:
    """The loop must stop on an end-of-turn token and leave it out of its result."""
    import numpy as np

    from .prompts import stop_ids

    stop = stop_ids(tokenizer)
    end = max(stop)
    words = tokenizer("The answer is seven", add_special_tokens=False)["input_ids"]
    session = ScriptedSession(words + [end] + words, vocab=len(tokenizer), prompt_len=3)
    got = loop(session, np.array([[1, 2, 3]], np.int64), 20, stop)
    assert list(got) == words, say("loop.end_of_turn", said=tokenizer.decode(words), end=tokenizer.decode([end]),
                                   got=tokenizer.decode(list(got)))


def kv_graph(path: str | Path, layers: int) -> None:
    """Inputs and outputs of the KV-cache graph by name, dtype and rank, with named (symbolic) dims."""
    from .export_kv import PAST, PRESENT, input_names, output_names

    io = onnx_graph.graph_io(path)
    got_in, got_out = [v["name"] for v in io["inputs"]], [v["name"] for v in io["outputs"]]
    expected = input_names(layers)
    assert got_in == expected, say("kv.inputs", got=got_in[:5], expected=expected[:5], n=len(expected))
    assert got_out == output_names(layers), say("kv.outputs", got=got_out[:4])
    for v in io["inputs"] + io["outputs"]:
        cache = v["name"].startswith((PAST, PRESENT))
        dtype, rank = ("float32", 4) if cache or v["name"] == "logits" else ("int64", 2)
        rank = 3 if v["name"] == "logits" else rank
        assert v["dtype"] == dtype and len(v["shape"]) == rank, say(
            "kv.io_type", name=v["name"], dtype=v["dtype"], rank=len(v["shape"]), want_dtype=dtype, want_rank=rank)
        length_axis = 2 if cache else 1
        for axis in (0, length_axis):
            assert isinstance(v["shape"][axis], str), say("kv.fixed_dim", name=v["name"], dim=v["shape"][axis],
                                                          axis=axis)


def kv_prefill_logits(path: str | Path, model, length: int = 7) -> None:
    """A prefill (empty past) through the KV graph gives the PyTorch model's logits."""
    import numpy as np
    import torch

    from .export_kv import cache_shape, empty_past, input_names, token_feed
    from .runtime import session

    config = model.config
    ids = np.arange(3, 3 + length, dtype=np.int64)[None] % config.vocab_size
    _, kv_heads, _, head_dim = cache_shape(config, 1, 0)
    empty = empty_past(kv_heads, head_dim)
    feed = {**token_feed(ids, 0), **dict.fromkeys(input_names(config.num_hidden_layers)[3:], empty)}
    got = session(path).run(["logits"], feed)[0]
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    diff = float(np.abs(got - expected).max())
    assert diff <= LOGIT_TOLERANCE, say("kv.prefill", diff=diff, limit=LOGIT_TOLERANCE)


# How much faster than recomputing the whole sequence a cached loop must be, after a
# 256-token prompt with 8 new tokens: one prefill and 7 one-token steps against 8 prefills,
# several times faster on any CPU; a loop without a cache is about 1x.
CACHE_SPEEDUP = 2.0


def faster(fast, slow, repeats: int = 2, at_least: float = 1.0) -> float:
    """Best-of-`repeats` time of `slow()` over `fast()`, measured now, side by side;
    fails unless `fast` is `at_least` times as fast. Returns the ratio."""
    import time

    def best(fn):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    ratio = best(slow) / best(fast)
    assert ratio > at_least, say("kv.slower", speedup=ratio, needed=at_least)
    return ratio


def summary_frame(summary, bench) -> None:
    """The chart's data: one row per configuration of `bench`, compression and tok_s."""
    import numpy as np

    expected = ["engine", "precision", "cache", "compression", "tok_s"]
    assert list(summary.columns) == expected, say("summary.columns", got=list(summary.columns), expected=expected)
    assert len(summary) == len(bench), say("summary.rows", n=len(summary), bench=len(bench))
    keys = ["engine", "precision", "cache"]
    assert summary[keys].reset_index(drop=True).equals(bench[keys].reset_index(drop=True)), say("summary.order")
    assert np.allclose(summary["compression"].to_numpy(float), 1 / bench["ratio"].to_numpy(float), rtol=1e-3), (
        say("summary.compression"))
    assert np.allclose(summary["tok_s"].to_numpy(float), bench["tok_s"].to_numpy(float)), say("summary.tok_s")


def cache_names(names, path: str | Path) -> None:
    """The student's list of cache input names against the graph's, in order."""
    from .export_kv import PAST

    graph = [v["name"] for v in onnx_graph.graph_io(path)["inputs"] if v["name"].startswith(PAST)]
    assert list(names) == graph, say("kv.cache_names", call="cache_input_names", got=list(names)[:3],
                                     expected=graph[:3], n=len(graph))
