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


def fp32_size(path: str | Path, params: int) -> None:
    """Catches a duplicated tied embedding (too big) and an FP16 export (half size)."""
    size, expected = onnx_graph.file_bytes(path), 4 * params
    ratio = size / expected
    assert abs(ratio - 1) <= SIZE_TOLERANCE, (
        f"{size / 1e6:,.0f} MB on disk is {ratio:.2f}x the FP32 size of {params:,} parameters "
        f"({expected / 1e6:,.0f} MB); above 1 suggests a weight stored twice (the tied embedding?), "
        "about 0.5 suggests FP16 weights")


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


def size_ratio(path: str | Path, fp32_path: str | Path, at_most: float) -> float:
    ratio = onnx_graph.file_bytes(path) / onnx_graph.file_bytes(fp32_path)
    assert ratio <= at_most, (f"the INT8 file is {ratio:.1%} of FP32; it should be at most {at_most:.0%}. "
                              "Is the embedding (and lm_head) quantized and stored once?")
    return ratio


def same_first_tokens(tokens: list[int], reference: list[int], first: int) -> None:
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    assert same >= first, (f"the quantized model's greedy answer leaves FP32's after {same} tokens; the first "
                           f"{first} must match. Which layers lose the most to INT8? See the sensitivity scan.")
