"""Quantizing the exported float graph: INT8 static (the lab's recipe), INT8
dynamic and INT4 weight-only for comparison (notebook 03).

Static INT8 runs in four passes, each streaming weights one tensor at a time,
so a 1.7B model needs about one copy of itself in RAM:
1. calibrate: per-channel activation ranges from the calibration reader;
2. prepare: an equivalent float graph (SmoothQuant folded into the weights,
   lm_head given its own [hidden, vocab] weight);
3. ONNX Runtime's `quantize_static`, fed the ranges through its calibration cache;
4. finish: the embedding lookup reads lm_head's int8 weight, so the tied matrix
   is stored once, in int8; the outlier layers get int8 weights, float activations;
   with `Recipe.dynamic_head`, lm_head's input takes its scale per call (in a KV
   graph, lm_head then computes the last position only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
from tqdm.auto import tqdm

from . import env, onnx_weights, smoothquant


def _import_nbits_quantizer():
    """ONNX Runtime's 4-bit quantizer module calls logging.basicConfig(level=INFO) on
    import, which would send every library's INFO logs to stderr (the exporter's
    thousands of lines) for the rest of the session. Import it with the root logger
    restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:], root.level = handlers, level
    return matmul_nbits_quantizer
from .calibration import channel_ranges, validate_reader
from .errors import LabkitError
from .onnx_graph import file_bytes, graph_io, load_graph, metadata, producers, replace_node, set_metadata
from .paths import MODEL_FILE, check_writable, staged_dir

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "QLinearMatMul", "MatMulIntegerToFloat", "MatMulNBits", "GatherBlockQuantized"}
_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
RECIPE_KEY = "labkit.recipe"  # the metadata entry holding the recipe a graph was built with


class QuantizeError(LabkitError, RuntimeError):
    pass


def default_weight_type() -> str:
    """"s8" where the CPU sums int8 products in 32 bits (VNNI, AMX, Arm); "u8" on x86 with
    AVX2 alone, where ONNX Runtime's u8 x s8 kernel saturates (env.int8_products_saturate)
    and its u8 x u8 kernel, which widens to 16 bits before multiplying, does not."""
    return "u8" if env.int8_products_saturate() else "s8"


@dataclass(frozen=True)
class Recipe:
    """The choices of static INT8 quantization; the defaults are the lab's recipe."""
    quant_format: str = "QDQ"             # QuantizeLinear/DequantizeLinear pairs that ORT fuses to int8 kernels
    activation_type: str = "u8"           # x86's int8 kernels take u8 activations
    weight_type: str = dataclasses.field(default_factory=default_weight_type)  # s8, or u8 on AVX2 alone
    per_channel: bool = True              # one scale per output channel of each weight
    weights_only_matmuls: bool = True     # attention's activation x activation MatMuls stay float
    smooth_alpha: float | None = 0.6      # SmoothQuant migration strength; None: off. Measured on
                                          # SmolLM2: 0.5 costs 11% English perplexity, 0.65 and 0.55
                                          # lose "Paris" (a close call even for FP32), 0.6 keeps both
    weight_only: tuple[str, ...] = ()     # linears (e.g. "model.layers.11.mlp.down_proj") whose
                                          # activations stay float: int8 weights only
    share_embedding: bool = True          # embedding and lm_head read one int8 matrix
    dynamic_head: bool = False            # lm_head's input scale computed per call (`_dynamic_head`),
                                          # a KV graph's lm_head on the last position only: closer to FP32

    def describe(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def recipe_of(graph: onnx.ModelProto) -> dict:
    """The recipe a static INT8 graph was built with (its metadata); {} if none is readable."""
    try:
        fields = json.loads(metadata(graph).get(RECIPE_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


def built_with_todays_recipe(graph: onnx.ModelProto) -> bool:
    """The graph's recipe names every choice today's Recipe has: a graph built before a
    choice was added is rebuilt, not reused."""
    return _names_every_choice(recipe_of(graph))


def _names_every_choice(recipe: dict) -> bool:
    return set(recipe) == {f.name for f in dataclasses.fields(Recipe)}


def built_with_the_kv_recipe(graph: onnx.ModelProto) -> bool:
    """A KV graph's INT8 from today's `lab_recipe(cached=True)`: lm_head's scale per call and
    every layer's down_proj weight-only (a layer per past key input)."""
    from .export_kv import PAST

    recipe = recipe_of(graph)
    layers = sum(i.name.startswith(PAST) and i.name.endswith(".key") for i in graph.graph.input)
    down = [name for name in recipe.get("weight_only", []) if name.endswith("mlp.down_proj")]
    return _names_every_choice(recipe) and recipe["dynamic_head"] is True and layers > 0 and len(down) == layers


# ONNX Runtime's defaults: int8 activations, one scale per tensor, every MatMul.
NAIVE = Recipe(activation_type="s8", per_channel=False, weights_only_matmuls=False, smooth_alpha=None,
               share_embedding=False, weight_type="s8")


def assert_float_model(path: str | Path) -> onnx.ModelProto:
    """The graph (without weights) of a float model; QuantizeError for anything else."""
    graph = load_graph(path)
    quantized = sorted({n.op_type for n in graph.graph.node} & QUANTIZED_OPS)
    if quantized:
        raise QuantizeError(f"{path} is already quantized (it has {', '.join(quantized)}); "
                            "quantize the float32 export instead")
    weights = {t.name: t for t in graph.graph.initializer}
    if not any(n.op_type == "MatMul" and n.input[1] in weights
               and weights[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in graph.graph.node):
        raise QuantizeError(f"{path} has no float32 MatMul weights to quantize")
    return graph


def _matmuls(graph: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(MatMuls with a weight, MatMuls of two activations)."""
    weights = {t.name for t in graph.graph.initializer}
    nodes = [n for n in graph.graph.node if n.op_type == "MatMul"]
    return [n for n in nodes if n.input[1] in weights], [n for n in nodes if n.input[1] not in weights]


def _tied_lm_head(graph: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | None:
    """(embedding Gather, Transpose, lm_head MatMul) when the output layer reads the
    embedding matrix through a Transpose, as a tied export does."""
    weights = {t.name for t in graph.graph.initializer}
    gather = next((n for n in graph.graph.node if n.op_type == "Gather" and n.input[0] in weights), None)
    if gather is None:
        return None
    for transpose in graph.graph.node:
        if transpose.op_type == "Transpose" and transpose.input[0] == gather.input[0]:
            matmul = next((n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] == transpose.output[0]),
                          None)
            if matmul is not None:
                return gather, transpose, matmul
    return None


def untie_lm_head(graph: onnx.ModelProto, src_dir: Path) -> dict[str, np.ndarray]:
    """Give lm_head its own [hidden, vocab] weight `lm_head.weight` (returned, to be
    added to the graph), so quantizers see it as an ordinary MatMul weight."""
    tied = _tied_lm_head(graph)
    if tied is None:
        return {}
    gather, transpose, matmul = tied
    table = onnx_weights.initializers(graph)[gather.input[0]]
    matmul.input[1] = "lm_head.weight"
    graph.graph.node.remove(transpose)
    return {"lm_head.weight": np.ascontiguousarray(onnx_weights.read(table, src_dir).T)}


def _drop_float_embedding(graph: onnx.ModelProto, gather: onnx.NodeProto) -> dict[str, np.ndarray]:
    """Point the embedding Gather at a one-row placeholder: the finish step reads
    the table from lm_head's int8 weight, and ONNX Runtime's quantizer, which holds
    the whole float graph in memory, need not hold this matrix too (1.2 GB at 1.7B)."""
    table = onnx_weights.initializers(graph)[gather.input[0]]
    gather.input[0] = "embedding_placeholder"
    return {"embedding_placeholder": np.zeros((1, table.dims[1]), np.float32)}


def _per_tensor(ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> TensorsData:
    # Zero must be representable exactly: padding and ReLU-like zeros stay zero.
    return TensorsData(CalibrationMethod.MinMax, {
        name: (np.float32(min(low.min(), 0.0)), np.float32(max(high.max(), 0.0)))
        for name, (low, high) in ranges.items()})


def _share_int8_embedding(graph: onnx.ModelProto, added: dict[str, np.ndarray]) -> None:
    """Make the embedding lookup read lm_head's 8-bit [hidden, vocab] weight: gather
    columns, subtract their zero points (u8 weights), scale, transpose. The float
    embedding matrix is then unused. `added`: weights about to join the graph (lm_head's
    own when it is weight-only)."""
    producer = producers(graph.graph)
    lm_head = next(n for n in graph.graph.node if n.op_type == "MatMul" and n.name.startswith("lm_head"))
    quantized, scale, *zero_point = producer[lm_head.input[1]].input
    weights = onnx_weights.initializers(graph)
    gather = next(n for n in graph.graph.node if n.op_type == "Gather" and n.input[0] in weights)
    ids, out = gather.input[1], gather.output[0]
    make = onnx.helper.make_node
    float_ = onnx.TensorProto.FLOAT
    nodes = [make("Gather", [quantized, ids], [out + "_int8"], name="model.embed_tokens/Gather", axis=1),
             make("Cast", [out + "_int8"], [out + "_float"], name="model.embed_tokens/Cast", to=float_)]
    unsigned = (added[quantized].dtype == np.uint8 if quantized in added
                else weights[quantized].data_type == onnx.TensorProto.UINT8)
    if zero_point and unsigned:  # s8 weights are symmetric
        nodes += [
            make("Gather", [zero_point[0], ids], [out + "_zp8"], name="model.embed_tokens/GatherZeroPoint", axis=0),
            make("Cast", [out + "_zp8"], [out + "_zp"], name="model.embed_tokens/CastZeroPoint", to=float_),
            make("Sub", [out + "_float", out + "_zp"], [out + "_centred"], name="model.embed_tokens/Sub")]
        centred = out + "_centred"
    else:
        centred = out + "_float"
    nodes += [
        make("Gather", [scale, ids], [out + "_scale"], name="model.embed_tokens/GatherScale", axis=0),
        make("Mul", [centred, out + "_scale"], [out + "_columns"], name="model.embed_tokens/Mul"),
        make("Transpose", [out + "_columns"], [out], name="model.embed_tokens/Transpose", perm=[1, 2, 0]),
    ]
    replace_node(graph.graph, gather, nodes)


def _symmetric_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 1 of a [in, out] MatMul weight) symmetric int8."""
    scale = np.maximum(np.abs(weight).max(axis=0), 1e-12).astype(np.float32) / 127
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale


def _weight_only(graph: onnx.ModelProto, src_dir: Path, linears: tuple[str, ...]) -> dict[str, np.ndarray]:
    """int8 weights with a DequantizeLinear in front of each named linear's MatMul;
    its activations stay float. Returns the initializers to add."""
    weights = onnx_weights.initializers(graph)
    added = {}
    for linear in linears:
        node = next((n for n in graph.graph.node if n.name == f"{linear}/MatMul"), None)
        if node is None:
            raise QuantizeError(f"no MatMul named {linear}/MatMul; weight_only takes names like "
                                "'model.layers.3.mlp.down_proj'")
        name = node.input[1]
        quantized, scale = _symmetric_int8(np.asarray(onnx_weights.read(weights[name], src_dir)))
        added.update({f"{name}_quantized": quantized, f"{name}_scale": scale,
                      f"{name}_zero_point": np.zeros_like(scale, dtype=np.int8)})
        position = list(graph.graph.node).index(node)
        graph.graph.node.insert(position, onnx.helper.make_node(
            "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
            [f"{name}_dequantized"], name=f"{linear}/DequantizeLinear", axis=1))
        node.input[1] = f"{name}_dequantized"
    return added


@contextlib.contextmanager
def _quiet_ort_quantizer():
    """quantize_static logs "consider pre-processing" to the root logger, i.e. to
    stderr in a notebook. Its pre-processing (symbolic shape inference) targets
    CNNs; our graph already carries its shapes."""
    # The 4-bit quantizer logs every node it visits at INFO through a logger of its own.
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def static_call(float_path: Path, out_path: Path, reader, ranges_file: Path, keep_float: list[str],
                recipe: Recipe = Recipe()) -> None:
    """labkit's `quantize_static` call (notebook 03's task 3 is the student's own): the
    prepared float graph at `float_path` to QDQ at `out_path`, ranges read from
    `ranges_file` (measured with `reader` already), the `keep_float` nodes left float."""
    quantize_static(
        str(float_path), str(out_path), reader, calibration_cache_path=str(ranges_file),
        quant_format=QuantFormat.QDQ if recipe.quant_format == "QDQ" else QuantFormat.QOperator,
        op_types_to_quantize=["MatMul"], per_channel=recipe.per_channel,
        activation_type=_TYPES[recipe.activation_type], weight_type=_TYPES[recipe.weight_type],
        nodes_to_exclude=keep_float, use_external_data_format=True,
        # Float MatMul outputs: ORT fuses to MatMulIntegerToFloat, and the
        # residual stream never passes through int8.
        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})


def _check_call_output(path: Path, keep_float: list[str]) -> None:
    """The quantize call wrote a graph, and left the nodes it was told to keep float alone."""
    if not path.is_file():
        raise QuantizeError(f"the quantize call wrote no file at {path.name}: save to the output path it is given")
    graph = load_graph(path)
    producer = producers(graph.graph)
    # The second input only: a MatMul's activation may share its QuantizeLinear with a
    # quantized neighbour (up_proj with gate_proj), which is not the call's doing.
    touched = [n.name for n in graph.graph.node if n.name in keep_float and n.input[1] in producer
               and producer[n.input[1]].op_type == "DequantizeLinear"]
    if touched:
        raise QuantizeError(f"the quantize call quantized {len(touched)} node(s) that must stay float, e.g. "
                            f"{touched[0]}: pass nodes_to_exclude=keep_float")


@dataclass
class _Plan:
    """What the four passes of `quantize_int8_static` share."""
    fp32_path: Path
    graph: onnx.ModelProto
    recipe: Recipe
    tied: tuple | None              # (embedding Gather, Transpose, lm_head MatMul) when shared
    observed: list[str]             # the activations whose ranges are measured
    keep_float: list[str]           # MatMuls ONNX Runtime's quantizer must leave float


def _plan(fp32_path: Path, recipe: Recipe) -> _Plan:
    graph = assert_float_model(fp32_path)
    with_weight, activation_only = _matmuls(graph)
    tied = _tied_lm_head(graph) if recipe.share_embedding else None
    if tied:  # lm_head gets a weight of its own before ORT sees the graph
        activation_only.remove(tied[2])
        with_weight.append(tied[2])
    observed = [n.input[0] for n in with_weight]
    if not recipe.weights_only_matmuls:
        observed += [x for n in activation_only for x in n.input]
    keep_float = [f"{name}/MatMul" for name in recipe.weight_only] + (
        [n.name for n in activation_only] if recipe.weights_only_matmuls else [])
    return _Plan(fp32_path, graph, recipe, tied, list(dict.fromkeys(observed)), keep_float)


def _prepare(plan: _Plan, ranges: dict, work: Path) -> None:
    """Pass 2: the float graph ONNX Runtime will quantize (SmoothQuant folded in, lm_head
    untied) in work/float, and the ranges, as its calibration cache, in work/ranges.json."""
    (work / "float").mkdir()
    factors = {}
    if plan.recipe.smooth_alpha is not None:
        factors, ranges = smoothquant.smooth(plan.graph, plan.fp32_path.parent, ranges, plan.recipe.smooth_alpha,
                                             skip=set(plan.recipe.weight_only))
    added = {**untie_lm_head(plan.graph, plan.fp32_path.parent),
             **_drop_float_embedding(plan.graph, plan.tied[0])} if plan.tied else {}
    onnx_weights.save(plan.graph, plan.fp32_path.parent, work / "float" / MODEL_FILE,
                      replace=smoothquant.apply(factors), added=added)
    save_tensors_data(_per_tensor(ranges), work / "ranges.json")


def _run_quantizer(plan: _Plan, reader, work: Path, call) -> None:
    """Pass 3: `call` (the student's, or `static_call`) from work/float to work/qdq."""
    (work / "qdq").mkdir()
    with _quiet_ort_quantizer():
        try:
            (call or functools.partial(static_call, recipe=plan.recipe))(
                work / "float" / MODEL_FILE, work / "qdq" / MODEL_FILE, reader, work / "ranges.json",
                plan.keep_float)
        except Exception as exc:
            if call is None:
                raise
            # ORT's message for a node it has no range for names no parameter of the call.
            raise QuantizeError(f"the quantize call raised {type(exc).__name__}: {exc}. Ranges exist only "
                                "for the MatMuls to quantize: pass calibration_cache_path=ranges_file, "
                                "op_types_to_quantize=['MatMul'] and nodes_to_exclude=keep_float") from exc
    _check_call_output(work / "qdq" / MODEL_FILE, plan.keep_float)
    shutil.rmtree(work / "float")


def _dynamic_head(graph: onnx.ModelProto) -> None:
    """lm_head's input quantized with a scale of its own at every call (DynamicQuantizeLinear,
    u8), not the calibrated one: ONNX Runtime fuses it to DynamicQuantizeMatMul. The final
    norm's output spans a range that changes from token to token, and lm_head's rounding
    picks the next token directly. Measured on SmolLM2's KV graph (last position only, below),
    held-out set, against the calibrated scale: with s8 weights on AVX-512 VNNI, next token
    87.9% / 85.7% instead of 82.1% / 83.4%, greedy agreement 0.23 instead of 0.18; with u8
    weights on the AVX2 kernels (QEMU's Haswell model), KL from FP32 0.042 / 0.048 instead of
    0.056 / 0.059 (README). No cost in speed measured.
    DynamicQuantizeLinear has one scale for the whole tensor, so a position's logits would
    depend on the other positions of the call, and a decode step (one position) would round
    otherwise than a whole-sequence pass: the cached INT8 loop would part from the no-cache
    one. In a KV graph lm_head therefore runs on the last position only (`_last_position`),
    whose scale is then its own in either pass (batch 1, as in every loop of the lab); a
    no-cache graph keeps every position."""
    producer = producers(graph.graph)
    head = next((n for n in graph.graph.node if n.op_type == "MatMul" and n.output[0] == "logits"), None)
    dequantize = producer.get(head.input[0]) if head is not None else None
    if dequantize is None or dequantize.op_type != "DequantizeLinear":  # lm_head reads a float activation
        return
    quantize = producer.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return
    from .export_kv import PAST

    x, added = quantize.input[0], []
    if any(i.name.startswith(PAST) for i in graph.graph.input):
        added.append(_last_position(graph, x))
        x = added[-1].output[0]
    per_call = [f"{x}_per_call", f"{x}_per_call_scale", f"{x}_per_call_zero_point"]
    added.append(onnx.helper.make_node("DynamicQuantizeLinear", [x], per_call, name=f"{x}_DynamicQuantizeLinear"))
    replace_node(graph.graph, quantize, added)
    dequantize.input[:] = per_call
    used = {name for node in graph.graph.node for name in node.input}
    for unused in [t for t in graph.graph.initializer if t.name in quantize.input[1:] and t.name not in used]:
        graph.graph.initializer.remove(unused)  # the calibrated scale and zero point


def _last_position(graph: onnx.ModelProto, x: str) -> onnx.NodeProto:
    """A Slice of `x` [batch, sequence, hidden] to its last position, the logits output
    declared [batch, 1, vocab] (as onnxruntime-genai's `prune_lm_head` does). Over a
    256-token prefill it also spares lm_head 255 of its 256 rows."""
    bounds = {f"{x}_last_{k}": np.array([v], np.int64)
              for k, v in (("start", -1), ("end", np.iinfo(np.int64).max), ("axis", 1))}
    graph.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in bounds.items())
    logits = next(o for o in graph.graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].Clear()
    logits.type.tensor_type.shape.dim[1].dim_value = 1
    return onnx.helper.make_node("Slice", [x, *bounds], [f"{x}_last"], name=f"{x}_last_position")


def _finish(plan: _Plan, work: Path) -> None:
    """Pass 4: weight-only linears, the shared int8 embedding, lm_head's per-call input
    scale if the recipe asks for it, the recipe in the metadata; writes work/model.onnx."""
    final = onnx.load(str(work / "qdq" / MODEL_FILE), load_external_data=False)
    added = _weight_only(final, work / "qdq", plan.recipe.weight_only)
    if plan.tied:  # after _weight_only: lm_head's int8 weight may come from either quantizer
        _share_int8_embedding(final, added)
    if plan.recipe.dynamic_head:
        _dynamic_head(final)
    set_metadata(final, RECIPE_KEY, plan.recipe.describe())
    onnx_weights.save(final, work / "qdq", work / MODEL_FILE, added=added)
    shutil.rmtree(work / "qdq")
    (work / "ranges.json").unlink()
    onnx.checker.check_model(str(work / MODEL_FILE))


@contextlib.contextmanager
def _passes(total: int):
    """A progress bar of `total` passes; `start(name)` ends the last pass and names the next."""
    bar = tqdm(total=total, desc="quantize", unit="step", file=sys.stdout)

    def start(name: str) -> None:
        if bar.postfix:  # a pass is under way: it ends here
            bar.update()
        bar.set_postfix_str(name)
    try:
        yield start
        bar.update()
    finally:
        bar.close()


def quantize_int8_static(fp32_path: str | Path, out_dir: str | Path, reader, recipe: Recipe = Recipe(),
                         threads: int | None = None, call=None) -> Path:
    """Quantize the float graph at `fp32_path` with `recipe`, calibrating on
    `reader`; writes `out_dir/model.onnx` (+ `.data`) and returns its path.
    `call(float_path, out_path, reader, ranges_file, keep_float)` runs ONNX Runtime's
    quantizer on the prepared graph (default: `static_call` with the recipe's types)."""
    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    plan = _plan(fp32_path, recipe)
    validate_reader(reader, graph_io(plan.graph)["inputs"])
    check_writable(out_dir, int(file_bytes(fp32_path) * 1.6), QuantizeError)
    with staged_dir(out_dir, QuantizeError) as work, _passes(4) as start:
        start("calibrate")
        ranges = channel_ranges(fp32_path, reader, plan.observed, threads)
        start("prepare the float graph")
        _prepare(plan, ranges, work)
        del ranges
        start("quantize (onnxruntime)")
        _run_quantizer(plan, reader, work, call)
        start("share the embedding, write")
        _finish(plan, work)
    return out_dir / MODEL_FILE


def quantize_int8_dynamic(fp32_path: str | Path, out_dir: str | Path) -> Path:
    """INT8 weights, activation scales computed at run time per tensor (no calibration)."""
    fp32_path = Path(fp32_path)
    assert_float_model(fp32_path)
    check_writable(Path(out_dir), int(file_bytes(fp32_path) * 0.5), QuantizeError)
    with staged_dir(out_dir, QuantizeError) as work:
        quantize_dynamic(str(fp32_path), str(work / MODEL_FILE), op_types_to_quantize=["MatMul"],
                         per_channel=True, weight_type=_TYPES[default_weight_type()], use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True})
    return Path(out_dir) / MODEL_FILE


def quantize_int4_weight_only(fp32_path: str | Path, out_dir: str | Path, block_size: int = 32) -> Path:
    """4-bit weights in blocks of `block_size` (MatMulNBits, GatherBlockQuantized);
    activations are quantized to int8 on the fly per block (accuracy level 4)."""
    fp32_path = Path(fp32_path)
    graph = assert_float_model(fp32_path)
    check_writable(Path(out_dir), int(file_bytes(fp32_path) * 0.6), QuantizeError)
    with staged_dir(out_dir, QuantizeError) as work:
        (work / "float").mkdir()
        added = untie_lm_head(graph, fp32_path.parent)
        onnx_weights.save(graph, fp32_path.parent, work / "float" / MODEL_FILE, added=added)
        del added
        model = onnx.load(str(work / "float" / MODEL_FILE))
        nbits = _import_nbits_quantizer()
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4,
                                              op_types_to_quantize=("MatMul", "Gather"),
                                              quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
        with _quiet_ort_quantizer(), np.errstate(invalid="ignore", divide="ignore"):  # all-zero blocks
            quantizer.process()
        del model
        quantizer.model.save_model_to_file(str(work / MODEL_FILE), use_external_data_format=True)
        shutil.rmtree(work / "float")
    return Path(out_dir) / MODEL_FILE


def int8_weight_bytes(path: str | Path) -> int:
    """Bytes of 8-bit weights, s8 or u8 (zero points not counted): what was actually quantized."""
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return sum(int(np.prod(t.dims)) for t in load_graph(path).graph.initializer
               if t.data_type in eight_bit and not t.name.endswith("zero_point"))


def static_linears(path: str | Path) -> tuple[int, int]:
    """(decoder linears whose input activation passes through QuantizeLinear, decoder linears):
    the MatMuls in model.layers whose second input is a weight, float or dequantized."""
    graph = load_graph(path).graph
    weights = {t.name for t in graph.initializer}
    producer = producers(graph)

    def dequantized(name: str, of_weight: bool) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and (node.input[0] in weights) == of_weight

    linears = [n for n in graph.node if n.op_type == "MatMul" and n.name.startswith("model.layers.")
               and (n.input[1] in weights or dequantized(n.input[1], True))]
    return sum(dequantized(n.input[0], False) for n in linears), len(linears)


def qdq_types(path: str | Path) -> dict[str, set]:
    """What the static MatMuls of a QDQ graph (activation and weight both dequantized) read:
    {"activations": element types of the activations' zero points, "weights": of the
    weights, "weight_scales": ranks of the weights' scales (1: per channel, 0: per
    tensor)}, as names like "uint8"."""
    graph = load_graph(path).graph
    weights = {t.name: t for t in graph.initializer}
    producer = producers(graph)
    element = onnx.helper.tensor_dtype_to_np_dtype
    found = {"activations": set(), "weights": set(), "weight_scales": set()}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        activation, weight = (producer.get(i) for i in node.input[:2])
        if not (activation and weight and activation.op_type == weight.op_type == "DequantizeLinear"
                and weight.input[0] in weights):
            continue
        if len(activation.input) > 2 and activation.input[2] in weights:
            found["activations"].add(str(element(weights[activation.input[2]].data_type)))
        found["weights"].add(str(element(weights[weight.input[0]].data_type)))
        found["weight_scales"].add(len(weights[weight.input[1]].dims))
    return found


def lab_recipe(model, reader, share: float = 0.9, scan_feeds: int | None = None, cached: bool = False) -> Recipe:
    """The lab's recipe for `model`. Float activations (int8 weights) for:
    - the down_proj layers that the sensitivity scan finds carrying `share` of the damage;
    - every o_proj: its input, the attention output, has no norm to fold a SmoothQuant
      scale into, and quantizing it cost SmolLM2 about 6% of English perplexity.
    For the KV graph (`cached`), the chat's graph, the closest to FP32 that keeps the cache
    exact: every down_proj (no scan), and lm_head's input scale per call on the last
    position (`_dynamic_head`). Every down_proj took SmolLM2's KL from FP32 from 0.044 to
    0.013 (English) on VNNI and on the emulated AVX2 kernels alike; a decode step costs the
    same, the first token after 256 about 12% more (README, "Every down_proj weight-only").
    `scan_feeds` limits the scan to that many calibration feeds and 2 evaluation
    feeds: a 1.7B model in PyTorch takes seconds per feed."""
    import re

    from .sensitivity import most_sensitive, scan

    def named(pattern: str) -> tuple[str, ...]:
        return tuple(name for name, _ in model.named_modules() if re.search(pattern, name))

    if cached:
        down = named(r"mlp\.down_proj$")
    else:
        feeds = reader.feeds[:scan_feeds] if scan_feeds else reader.feeds
        down = most_sensitive(scan(model, feeds, eval_feeds=2 if scan_feeds else 6), share)
    return Recipe(weight_only=down + named(r"self_attn\.o_proj$"), dynamic_head=cached)
