"""The graders' checks. Each raises AssertionError with a message that tells the
student what is wrong and what to do; graded cells call one check each."""
from __future__ import annotations

from pathlib import Path

from . import onnx_graph
from .parity import LOGIT_TOLERANCE, Parity

SIZE_TOLERANCE = 0.05


def input_names(path: str | Path, expected: list[str]) -> None:
    names = [v["name"] for v in onnx_graph.graph_io(path)["inputs"]]
    assert names == expected, (f"graph inputs are {names}, expected exactly {expected} in that order: "
                               "check input_names and the wrapper's forward signature")


def input_dtypes(path: str | Path, dtype: str = "int64") -> None:
    wrong = {v["name"]: v["dtype"] for v in onnx_graph.graph_io(path)["inputs"] if v["dtype"] != dtype}
    assert not wrong, f"inputs must be {dtype} (token ids and masks); got {wrong}"


def symbolic_dims(path: str | Path, axes: tuple[int, ...] = (0, 1)) -> None:
    """Every input's batch (0) and sequence (1) dims must be named, not fixed numbers."""
    for v in onnx_graph.graph_io(path)["inputs"]:
        for axis in axes:
            dim = v["shape"][axis] if axis < len(v["shape"]) else None
            assert isinstance(dim, str), (
                f"input {v['name']} has a fixed size {dim!r} on axis {axis}: the graph would only accept "
                "that one shape. Give this axis a torch.export.Dim in dynamic_shapes.")


def logits_output(path: str | Path, vocab_size: int) -> None:
    outputs = onnx_graph.graph_io(path)["outputs"]
    assert [o["name"] for o in outputs] == ["logits"], (
        f"outputs are {[o['name'] for o in outputs]}, expected only ['logits']: return the logits tensor "
        "from forward, not the model's output object")
    logits = outputs[0]
    assert logits["dtype"] == "float32", f"logits are {logits['dtype']}, expected float32"
    assert len(logits["shape"]) == 3 and logits["shape"][2] == vocab_size, (
        f"logits have shape {logits['shape']}, expected [batch, sequence, {vocab_size}]")


def fp32_size(path: str | Path, params: int, expected: int | None = None) -> None:
    """Catches a duplicated tied embedding (too big) and an FP16 export (half size). `expected`:
    the bytes of a correct export, where page alignment is not negligible (a toy model)."""
    size, expected = onnx_graph.file_bytes(path), expected or 4 * params
    ratio = size / expected
    assert abs(ratio - 1) <= SIZE_TOLERANCE, (
        f"{size / 1e6:,.0f} MB on disk is {ratio:.2f}x the FP32 size of {params:,} parameters "
        f"({expected / 1e6:,.0f} MB); above 1 suggests a weight stored twice (the tied embedding?), "
        "about 0.5 suggests FP16 weights")


def one_data_file(path: str | Path) -> None:
    """The weights sit in one external-data file beside the graph, named after it."""
    files = onnx_graph.external_files(onnx_graph.load_graph(path))
    expected = Path(path).name + ".data"
    assert files == [expected], (
        f"the graph's weights are in {files or 'the .onnx file itself'}, expected one file {expected!r} beside it: "
        "save with external_data=True")


def mask_patch(seen: dict[str, bool]) -> None:
    """`seen`: what `patches.observe(patch)` saw the patch do."""
    assert seen.get("replaced"), ("inside the with block, AttentionMaskInterface._global_mapping['sdpa'] is still the "
                                  "original function: put your replacement there")
    assert seen.get("restored"), "after the with block the original mask function is not back: restore it on exit"
    assert seen.get("error_passed"), "an error raised inside the with block did not reach the caller: do not swallow it"
    assert seen.get("restored_after_error"), (
        "after a with block that raised, the original mask function is not back: restore it in a finally clause")


def logits_close(result: Parity) -> None:
    assert result.max_abs_logit_diff <= LOGIT_TOLERANCE, (
        f"ONNX and PyTorch logits differ by up to {result.max_abs_logit_diff:.2e} (limit {LOGIT_TOLERANCE:g}): "
        "the graph does not compute the same function (wrong mask? wrong inputs passed to the model?)")


def greedy_identical(result: Parity) -> None:
    for i, (a, b) in enumerate(zip(result.tokens_torch, result.tokens_onnx)):
        first = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert first is None, f"prompt {i}: greedy tokens diverge at position {first} ({a[first]} vs {b[first]})"


def quantized_model(path: str | Path) -> None:
    """A valid ONNX file whose weights are mostly int8 and whose graph has quantized operators."""
    import onnx

    from .quantize import QUANTIZED_OPS, int8_weight_bytes

    onnx.checker.check_model(str(path))
    ops = set(onnx_graph.op_histogram(path)) & QUANTIZED_OPS
    assert ops, f"{Path(path).name} has no quantized operators: did quantization run on this file?"
    share = int8_weight_bytes(path) / onnx_graph.file_bytes(path)
    assert share > 0.5, f"only {share:.0%} of the file is int8 weights: most weights were left in float"


STATIC_SHARE = 0.5  # the lab's recipe quantizes the activations of 173 of SmolLM2's 210 decoder linears


def static_share(path: str | Path, at_least: float = STATIC_SHARE) -> float:
    """The share of decoder linears (MatMuls with a weight, in model.layers) whose input
    activation is quantized too, not only the weight: static INT8 in fact."""
    from .quantize import static_linears

    quantized, linears = static_linears(path)
    share = quantized / max(linears, 1)
    assert share >= at_least, (
        f"only {quantized} of {linears} decoder linears ({share:.0%}) read int8 activations; static INT8 needs at "
        f"least {at_least:.0%}. The rest have int8 weights only: keep float only the layers the scan points at.")
    return share


def quantize_call_types(path: str | Path, weight_type: str) -> None:
    """The quantize call's choices, read from its graph: QDQ, u8 activations, `weight_type`
    ("s8" or "u8") weights with one scale per output channel."""
    from .quantize import qdq_types

    found = qdq_types(path)
    wanted = {"s8": "int8", "u8": "uint8"}[weight_type]
    assert found["weights"], "no DequantizeLinear of a weight: use quant_format=QuantFormat.QDQ"
    assert found["activations"] == {"uint8"}, (
        f"activations are quantized to {sorted(found['activations'])}: x86's int8 kernels take "
        "activation_type=QuantType.QUInt8")
    assert found["weights"] == {wanted}, (
        f"weights are {sorted(found['weights'])}, this CPU wants {wanted} (quantize.default_weight_type() is "
        f"{weight_type!r}): set weight_type accordingly")
    assert found["weight_scales"] == {1}, "weights have one scale per tensor: set per_channel=True"


def size_ratio(path: str | Path, fp32_path: str | Path, at_most: float) -> float:
    ratio = onnx_graph.file_bytes(path) / onnx_graph.file_bytes(fp32_path)
    assert ratio <= at_most, (f"the INT8 file is {ratio:.1%} of FP32; it should be at most {at_most:.0%}. "
                              "Is the embedding (and lm_head) quantized and stored once?")
    return ratio


def follows_fp32(shares: dict[str, float], at_least: float) -> None:
    """`shares`: quality.next_token_agreement of the quantized model with FP32."""
    low = {lang: share for lang, share in shares.items() if share < at_least}
    assert not low, (f"the quantized model predicts FP32's next token for only "
                     + ", ".join(f"{share:.0%} of the {lang} text" for lang, share in low.items())
                     + f" (at least {at_least:.0%} needed). Which layers lose the most to INT8? "
                     "See the sensitivity scan.")


def same_first_tokens(tokens: list[int], reference: list[int], first: int) -> None:
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    assert same >= first, (f"the quantized model's greedy answer leaves FP32's after {same} tokens; the first "
                           f"{first} must match. Which layers lose the most to INT8? See the sensitivity scan.")


def same_tokens(tokens, reference: list[int], tokenizer, prompt: str) -> None:
    """The student's generated tokens must equal the reference loop's, exactly."""
    assert isinstance(tokens, (list, tuple)) and all(isinstance(t, int) for t in tokens), (
        f"return a list of Python ints (use int(...) on numpy values); got {type(tokens).__name__}")
    if list(tokens) == reference:
        return
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    assert False, (f"on {prompt!r} your tokens leave the reference at position {first} of {len(reference)}:\n"
                   f"  yours:     {tokenizer.decode(list(tokens)[:first + 3])!r} ({len(tokens)} tokens)\n"
                   f"  reference: {tokenizer.decode(reference[:first + 3])!r}\n"
                   "Argmax of the last position's logits? Stopping before (not after) an end-of-turn token?")


def loop_matches_reference(loop, session, tokenizer, prompts: list[str], new_tokens: int) -> None:
    """`loop(session, prompt_ids, max_new_tokens, stop_ids)` against labkit's no-cache loop."""
    from . import generate
    from .parity import chat_ids

    stop = generate.stop_ids(tokenizer)
    for prompt in prompts:
        ids = chat_ids(tokenizer, prompt).numpy()
        reference = generate.generate(generate.NoCache(session), ids, max_new_tokens=new_tokens, stop=stop).tokens
        same_tokens(loop(session, ids, new_tokens, stop), reference, tokenizer, prompt)


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

    from .generate import stop_ids

    stop = stop_ids(tokenizer)
    end = max(stop)
    words = tokenizer("The answer is seven", add_special_tokens=False)["input_ids"]
    session = ScriptedSession(words + [end] + words, vocab=len(tokenizer), prompt_len=3)
    got = loop(session, np.array([[1, 2, 3]], np.int64), 20, stop)
    assert list(got) == words, (
        f"the model said {tokenizer.decode(words)!r} then its end-of-turn token {tokenizer.decode([end])!r}; "
        f"your loop returned {tokenizer.decode(list(got))!r} ({len(got)} tokens). Stop as soon as a token "
        "in stop_ids comes out, without adding it.")


def kv_graph(path: str | Path, layers: int) -> None:
    """Inputs and outputs of the KV-cache graph by name, dtype and rank, with named (symbolic) dims."""
    from .export_kv import input_names, output_names

    io = onnx_graph.graph_io(path)
    got_in, got_out = [v["name"] for v in io["inputs"]], [v["name"] for v in io["outputs"]]
    assert got_in == input_names(layers), (
        f"inputs are {got_in[:5]}..., expected {input_names(layers)[:5]}... ({len(input_names(layers))} in all): "
        "input_ids, attention_mask, position_ids, then past_key_values.{i}.key/.value per layer")
    assert got_out == output_names(layers), (
        f"outputs are {got_out[:4]}..., expected logits then present.{{i}}.key/.value per layer")
    for v in io["inputs"] + io["outputs"]:
        cache = v["name"].startswith(("past_key_values.", "present."))
        dtype, rank = ("float32", 4) if cache or v["name"] == "logits" else ("int64", 2)
        rank = 3 if v["name"] == "logits" else rank
        assert v["dtype"] == dtype and len(v["shape"]) == rank, (
            f"{v['name']} is {v['dtype']} of rank {len(v['shape'])}, expected {dtype} of rank {rank}")
        length_axis = 2 if cache else 1
        for axis in (0, length_axis):
            assert isinstance(v["shape"][axis], str), (
                f"{v['name']} has a fixed size {v['shape'][axis]} on axis {axis}; batch and sequence lengths "
                "must be symbolic (a named dim in dynamic_shapes)")


def kv_prefill_logits(path: str | Path, model, length: int = 7) -> None:
    """A prefill (empty past) through the KV graph gives the PyTorch model's logits."""
    import numpy as np
    import torch

    from .export_kv import cache_shape, input_names
    from .runtime import session

    config = model.config
    ids = np.arange(3, 3 + length, dtype=np.int64)[None] % config.vocab_size
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(length)[None],
            **{name: np.zeros(cache_shape(config, 1, 0), np.float32)
               for name in input_names(config.num_hidden_layers)[3:]}}
    got = session(path).run(["logits"], feed)[0]
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    diff = float(np.abs(got - expected).max())
    assert diff <= LOGIT_TOLERANCE, (
        f"a prefill through your graph gives logits up to {diff:.2e} from the model's (limit {LOGIT_TOLERANCE:g}): "
        "pass input_ids, attention_mask, position_ids and the cache built from past to the model")


def faster(fast, slow, repeats: int = 2) -> float:
    """Best-of-`repeats` time of `slow()` over `fast()`, measured now, side by side;
    fails unless `fast` is faster. Returns the ratio."""
    import time

    def best(fn):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    ratio = best(slow) / best(fast)
    assert ratio > 1, (f"the cached loop took {1 / ratio:.2f}x the time of the no-cache loop: is the decode step "
                       "feeding only the new token, with the past from the previous call?")
    return ratio


def summary_frame(summary, bench) -> None:
    """The chart's data: one row per configuration of `bench`, compression and tok_s."""
    import numpy as np

    expected = ["engine", "precision", "cache", "compression", "tok_s"]
    assert list(summary.columns) == expected, f"columns are {list(summary.columns)}, expected {expected}"
    assert len(summary) == len(bench), f"{len(summary)} rows; bench has {len(bench)}: one row per bench row"
    keys = ["engine", "precision", "cache"]
    assert summary[keys].reset_index(drop=True).equals(bench[keys].reset_index(drop=True)), (
        "the rows must be bench's configurations in bench's order")
    assert np.allclose(summary["compression"].to_numpy(float), 1 / bench["ratio"].to_numpy(float), rtol=1e-3), (
        "compression is FP32 bytes divided by the row's bytes (1 / bench['ratio'])")
    assert np.allclose(summary["tok_s"].to_numpy(float), bench["tok_s"].to_numpy(float)), "tok_s must be bench's"


def cache_names(names, path: str | Path) -> None:
    """The student's list of cache input names against the graph's, in order."""
    graph = [v["name"] for v in onnx_graph.graph_io(path)["inputs"] if v["name"].startswith("past_key_values.")]
    assert list(names) == graph, (f"your names start {list(names)[:3]}, the graph's {graph[:3]} "
                                  f"({len(graph)} in all: a key and a value per layer, layer by layer)")
