"""What the referee checks for each graded cell, notebook by notebook.

Per notebook: the prelude (trusted code that stands in for the notebook's locked setup cells
in the child), the labkit functions that are the answers to its tasks (disarmed in the
child: a submission that calls one scores 0 on the task it was reaching for), and one task
per graded cell. A task asks the child for the student's results on inputs drawn here and
compares them with references computed here; it fails by raising AssertionError with what
the student should fix. The inputs are drawn per student from the course's secret key, so a
table of answers copied into a notebook does not help.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import checks, paths
from ..messages import language, say
from ..prompts import calibration_prompts, chat_ids, stop_ids
from .child import Child

# ---------------------------------------------------------------- shared pieces

# The no-cache and cached loops' answers: labkit's own loops and what calls them.
LOOPS = ["labkit.generate.generate", "labkit.generate.NoCache", "labkit.generate.KVCache",
         "labkit.generate.Recompute", "labkit.generate.greedy_ort", "labkit.generate.next_token",
         "labkit.bench.decode_bench._ort_runner", "labkit.checks.loop_matches_reference"]

COUNTRIES = ["France", "Italy", "Japan", "Brazil", "Canada", "Egypt", "Kenya", "Norway", "Peru", "India",
             "Spain", "Chile", "Greece", "Mexico", "Vietnam", "Germany"]
THINGS = ["the sea", "music", "mountains", "rain", "coffee", "trains", "libraries", "bicycles", "winter",
          "the moon", "gardens", "chess", "bridges", "rivers", "bread", "clocks"]
THINGS_ZH = ["大海", "音乐", "高山", "下雨", "咖啡", "火车", "图书馆", "自行车", "冬天", "月亮", "花园",
             "象棋", "桥", "河流", "面包", "时钟"]


def prompts(rng: np.random.Generator, n: int) -> list[str]:
    """`n` chat prompts, alternately Chinese and English, with numbers drawn from 10^8 choices."""
    a, b = (int(x) for x in rng.integers(10, 9999, 2))
    pool = [f"{a}加{b}等于多少？请只回答数字。",
            f"What is {a} plus {b}? Answer with the number only.",
            f"请用一句话描述{THINGS_ZH[rng.integers(len(THINGS_ZH))]}，并提到数字{a}。",
            f"Write one sentence about {THINGS[rng.integers(len(THINGS))]} that mentions the number {b}.",
            f"{COUNTRIES[rng.integers(len(COUNTRIES))]}的首都是哪里？",
            f"What is the capital of {COUNTRIES[rng.integers(len(COUNTRIES))]}? Then name a number near {a}."]
    return pool[:n] if n <= len(pool) else pool + prompts(rng, n - len(pool))


@dataclass
class Ctx:
    rng: np.random.Generator
    for_child: dict = field(default_factory=dict)   # becomes `context` in the child's prelude
    state: dict = field(default_factory=dict)       # the referee's own (references, paths)
    scratch: Path | None = None                     # a folder of the referee's, for this notebook


@dataclass
class Notebook:
    prelude: str
    forbidden: list[str]
    context: Callable[[np.random.Generator], Ctx]
    tasks: dict[str, Callable[[Child, Ctx], None]]
    prepare: Callable[[], None] | None = None  # builds what the notebook's kernel reads from the shared folder
    # Run in the child before the student's cells, in a namespace of its own whose names the
    # probes see over the student's: what a probe needs that a student's cell could rebind.
    trusted: str = ""


def _shared_relative(path: Path) -> str:
    """A trusted graph's path as the child finds it: below its view of the shared folder."""
    return str(Path(path).resolve().relative_to(paths.shared_dir().resolve()))



# ---------------------------------------------------------------- 01 environment

def _context_01(rng):
    return Ctx(rng)


def _prepare_models() -> None:
    """The converted bundled model (every notebook loads it)."""
    from ..models import load_tokenizer

    load_tokenizer()


def _prepare_graphs(*variants: str):
    """The referee's builds of students' graphs a notebook's setup reads (in
    `paths.reference_dir()`): a submission that did not build them copies these
    (`artifacts.ensure`) instead of exporting and quantizing again in its kernel, 33 s for
    the fp32 export alone."""
    from .. import artifacts, models

    loaded = models.load()
    for variant in variants:
        artifacts.ensure(loaded, variant, log=lambda _: None)
    return loaded


def _weight_bytes(child: Child, ctx: Ctx) -> None:
    bits = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}
    for dtype in bits:
        n = int(ctx.rng.integers(1, 5 * 10**9)) * 2  # even: half a byte per INT4 weight is exact
        got = child.value("weight_bytes(probe['n'], probe['dtype'])", f"weight_bytes({n}, {dtype!r})",
                          n=n, dtype=dtype)
        assert type(got) is int, say("int.return", call=f"weight_bytes({n}, {dtype!r})", kind=type(got).__name__)
        assert got == n * bits[dtype] // 8, say("weight_bytes.value", n=n, dtype=dtype, got=got, per=bits[dtype] / 8)


def _param_count(child: Child, ctx: Ctx) -> None:
    from ..models import QWEN3_1_7B_SHAPE, param_count, qwen3_config

    rng = ctx.rng
    shapes = [dict(QWEN3_1_7B_SHAPE)]
    for tie in (True, False):
        heads = int(rng.choice([4, 8, 16]))
        shapes.append(dict(QWEN3_1_7B_SHAPE, tie_word_embeddings=tie, num_hidden_layers=int(rng.integers(1, 6)),
                           hidden_size=64 * int(rng.integers(2, 12)), intermediate_size=32 * int(rng.integers(3, 40)),
                           num_attention_heads=heads, num_key_value_heads=int(rng.choice([1, 2, 4])),
                           head_dim=int(rng.choice([16, 32, 64])), vocab_size=int(rng.integers(1000, 5000))))
    for shape in shapes:
        got = child.value("qwen3_param_count(models.qwen3_config(probe['shape']))", "qwen3_param_count(cfg)",
                          shape=shape)
        expected = param_count(qwen3_config(shape))
        changed = {k: v for k, v in shape.items() if QWEN3_1_7B_SHAPE.get(k) != v}
        assert got == expected, say("param_count.off", off=got - expected, changed=changed or "Qwen3-1.7B")


def _count_tokens(child: Child, ctx: Ctx) -> None:
    from ..models import load_tokenizer

    tokenizer = load_tokenizer()
    texts = ["", *prompts(ctx.rng, 4), "端侧部署 on-device deployment\n\n" + str(int(ctx.rng.integers(10**6)))]
    for text in texts:
        got = child.value("count_tokens(tokenizer, probe['text'])", f"count_tokens(tokenizer, {text!r})", text=text)
        expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert type(got) is int, say("int.return", call="count_tokens", kind=type(got).__name__)
        assert got == expected, say("count_tokens.value", text=text, got=got, expected=expected)


ENV = Notebook(
    prelude="import labkit\nfrom labkit import env, models\ntokenizer = labkit.load_tokenizer()\n",
    forbidden=["labkit.models.param_count"],
    context=_context_01,
    tasks={"test-weight-bytes": _weight_bytes, "test-param-count": _param_count,
           "test-count-tokens": _count_tokens},
    prepare=_prepare_models)


# ---------------------------------------------------------------- 02 export

EXPORT_PRELUDE = """\
import torch
import labkit
from labkit import checks, export, mask_patch, models, onnx_graph, parity, patches, paths, runtime
tiny = models.tiny_qwen3()
loaded = tiny  # the referee grades the wrapper and its export on the tiny Qwen3
"""


def _context_02(rng):
    from ..models import tiny_qwen3

    ctx = Ctx(rng)
    ctx.state["tiny"] = tiny_qwen3()
    return ctx


def _wrapper(child: Child, ctx: Ctx) -> None:
    import torch

    from ..export import LogitsWrapper

    tiny = ctx.state["tiny"]
    vocab = tiny.model.config.vocab_size
    ids = torch.from_numpy(ctx.rng.integers(0, vocab, (2, 9)).astype(np.int64))
    mask = torch.ones_like(ids)
    mask[0, : int(ctx.rng.integers(2, 5))] = 0  # left padding must reach the model
    got = child.value("Wrapper(tiny.model)(probe['ids'], probe['mask'])", "Wrapper(model)(input_ids, attention_mask)",
                      ids=ids, mask=mask)
    assert isinstance(got, torch.Tensor), say("wrapper.not_tensor", kind=type(got).__name__)
    assert tuple(got.shape) == (2, 9, vocab), say("wrapper.shape", shape=tuple(got.shape), expected=(2, 9, vocab))
    with torch.no_grad():
        reference = LogitsWrapper(tiny.model)(ids, mask)
    assert torch.allclose(got, reference, atol=1e-5), say("wrapper.mask")


def _dynamic_shapes(child: Child, ctx: Ctx) -> None:
    kind = child.value("type(make_dynamic_shapes()).__name__", "make_dynamic_shapes()")
    assert kind == "tuple", say("shapes.not_tuple", kind=kind)
    got = child.value("[{str(axis): [type(dim).__name__, id(dim)] for axis, dim in spec.items()} "
                      "for spec in make_dynamic_shapes()]", "make_dynamic_shapes()")
    assert len(got) == 2, say("shapes.count", n=len(got))
    assert all(set(spec) == {"0", "1"} for spec in got), say("shapes.axes")
    assert all("Dim" in kind for spec in got for kind, _ in spec.values()), say("shapes.dim")
    assert got[0]["0"][1] == got[1]["0"][1] and got[0]["1"][1] == got[1]["1"][1], say("shapes.shared")


def _exported(child: Child, ctx: Ctx) -> Path:
    """The tiny Qwen3 exported with the student's wrapper and shapes, once per notebook."""
    if "onnx" not in ctx.state:
        ctx.state["onnx"] = None
        child.value("str(export.export_with(export_model, tiny.model, 'export', wrapper=Wrapper(tiny.model)))",
                    "export.export_with(export_model, model, out_dir, wrapper=Wrapper(model))")
        ctx.state["onnx"] = _regular_export(child, "export", ctx.scratch / "export")
    if ctx.state["onnx"] is None:
        raise AssertionError(say("export.failed"))
    return ctx.state["onnx"]


def _regular_export(child: Child, folder: str, target: Path, name: str = paths.MODEL_FILE) -> Path:
    """The child's export in its folder `folder` ("" for its working folder), copied out
    as plain files: a link, a FIFO or a device is not the child's own work, and the referee
    must not open one (untrusted_files)."""
    from ..onnx_graph import external_files, load_graph
    from .untrusted_files import NotPlainFile, copy_out

    target.mkdir()
    for file in (name, name + ".data"):
        try:
            copy_out(child.files, str(Path(folder, file)), target / file)
        except NotPlainFile:
            raise AssertionError(say("export.not_regular", file=file)) from None
    assert (target / name).is_file(), say("export.missing", name=name)
    graph = load_graph(target / name)
    assert all(file == name + ".data" for file in external_files(graph)), say("export.data_beside", name=name)
    return target / name


def _mask_patch(child: Child, ctx: Ctx) -> None:
    """The legacy export on the vmap mask path, inside the student's patch: the graph must
    compute the tiny model's logits; then what the patch does to the registry."""
    import torch

    from ..onnx_graph import load_graph
    from ..runtime import session

    error = child.value("referee_mask_patch.legacy_export(tiny.model, 'patched.onnx', patch=index_based_mask)",
                        "mask_patch.legacy_export(tiny.model, path, patch=index_based_mask)")
    assert error is None, say("patch.still_fails", error=error)
    path = _regular_export(child, "", ctx.scratch / "patched", "patched.onnx")
    # Checked here, on the file: only the vmap mask path adds the index mask `kv >= 0`. A cell
    # that turned the path off exported without any patch (and scored, before this check).
    assert "GreaterOrEqual" in {node.op_type for node in load_graph(path).graph.node}, say("patch.off_the_path")
    tiny = ctx.state["tiny"]
    ids = ctx.rng.integers(0, tiny.model.config.vocab_size, (1, int(ctx.rng.integers(3, 12)))).astype(np.int64)
    with torch.no_grad():
        reference = tiny.model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    got = session(path).run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert got.shape == reference.shape and np.abs(got - reference).max() < 1e-4, say("patch.logits")
    checks.mask_patch(child.value("referee_mask_patch.observe(index_based_mask)", "what index_based_mask() does"))


def _graph_check(check: Callable[[Path, Ctx], None]):
    def task(child: Child, ctx: Ctx) -> None:
        check(_exported(child, ctx), ctx)
    return task


def _tiny_fp32(tiny) -> Path:
    """labkit's own export of the tiny Qwen3 (kept in the referee's folder)."""
    from ..export import export_onnx
    from .trust import private_dir

    out = private_dir() / "tiny-fp32"
    with paths.building(out):
        if not (out / paths.MODEL_FILE).is_file():
            export_onnx(tiny.model, out)
    return out / paths.MODEL_FILE


def _tiny_bytes(ctx: Ctx) -> int:
    from ..onnx_graph import file_bytes

    return file_bytes(_tiny_fp32(ctx.state["tiny"]))


def _parity(ctx: Ctx, path: Path):
    if "parity" not in ctx.state:
        from ..parity import check_parity
        from ..runtime import session

        tiny = ctx.state["tiny"]
        ctx.state["parity"] = check_parity(tiny.model, session(path), tiny.tokenizer, new_tokens=16)
    return ctx.state["parity"]


# A copy of mask_patch of the referee's own, loaded before the student's cells and not in
# sys.modules: a cell that rebinds `mask_patch.vmap_mask_path` or `mask_patch.observe` (which
# earned the patch task's points with an empty patch) changes the public module only.
EXPORT_TRUSTED = """\
import importlib.util
import labkit.mask_patch
_spec = importlib.util.spec_from_file_location("labkit.mask_patch", labkit.mask_patch.__file__)
referee_mask_patch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(referee_mask_patch)
"""

EXPORT = Notebook(
    prelude=EXPORT_PRELUDE,
    trusted=EXPORT_TRUSTED,
    forbidden=["labkit.export.LogitsWrapper", "labkit.export.dynamic_shapes", "labkit.export.export_onnx",
               "labkit.export.torch_export", "labkit.patches.index_based_attention_mask"],
    context=_context_02,
    tasks={"test-wrapper": _wrapper, "test-dynamic-shapes": _dynamic_shapes, "test-patch": _mask_patch,
           "check-input-names": _graph_check(lambda p, c: checks.input_names(p, ["input_ids", "attention_mask"])),
           "check-input-dtypes": _graph_check(lambda p, c: checks.input_dtypes(p, "int64")),
           "check-symbolic-dims": _graph_check(lambda p, c: checks.symbolic_dims(p)),
           "check-logits-output": _graph_check(
               lambda p, c: checks.logits_output(p, c.state["tiny"].model.config.vocab_size)),
           "check-size": _graph_check(lambda p, c: (checks.one_data_file(p),
                                                     checks.fp32_size(p, c.state["tiny"].params, _tiny_bytes(c)))),
           "check-logits-close": _graph_check(lambda p, c: checks.logits_close(_parity(c, p))),
           "check-greedy": _graph_check(lambda p, c: checks.greedy_identical(_parity(c, p)))},
    prepare=_prepare_models)


# ---------------------------------------------------------------- 03 quantization

QUANT_PRELUDE = """\
import labkit
from labkit import artifacts, calibration, charts, checks, onnx_graph, paths, prompts, quality, quantize, runtime, sensitivity
from onnxruntime.quantization import CalibrationDataReader
from labkit.paths import shared_dir
loaded = labkit.load()
tokenizer = loaded.tokenizer
fp32_path = shared_dir() / context["fp32"]
graph_inputs = onnx_graph.graph_io(fp32_path)["inputs"]
sensitive = tuple(context["sensitive"])
"""
MAX_TOKENS = 256


def _context_03(rng):
    from .. import artifacts, calibration, models, sensitivity

    loaded = models.load()
    fp32 = artifacts.ensure(loaded, "fp32", log=lambda _: None)
    feeds = calibration.PromptReader(loaded.tokenizer).feeds
    sensitive = sensitivity.most_sensitive(sensitivity.scan(loaded.model, feeds), share=0.9)
    return Ctx(rng, {"fp32": _shared_relative(fp32), "sensitive": list(sensitive)},
               {"loaded": loaded, "fp32": fp32, "tiny": models.tiny_qwen3()})


def _reader(child: Child, ctx: Ctx) -> None:
    from ..calibration import PromptReader

    tokenizer = ctx.state["loaded"].tokenizer
    pool = calibration_prompts()
    chosen = [pool[i] for i in ctx.rng.choice(len(pool), 3, replace=False)] + prompts(ctx.rng, 1)
    chosen.append("长 " * int(ctx.rng.integers(300, 500)))  # longer than MAX_TOKENS
    feeds = child.value("[f for f in iter(Reader(tokenizer, probe['prompts']).get_next, None)][:20]",
                        "Reader(tokenizer, prompts).get_next()", prompts=chosen)
    expected = PromptReader(tokenizer, chosen, max_tokens=MAX_TOKENS).feeds
    assert isinstance(feeds, list) and len(feeds) == len(chosen), (
        say("reader.count", n=len(chosen), got=len(feeds) if isinstance(feeds, list) else repr(feeds)))
    for prompt, mine, ref in zip(chosen, feeds, expected):
        assert isinstance(mine, dict) and sorted(mine) == ["attention_mask", "input_ids"], say("reader.feed_keys")
        for name in ("input_ids", "attention_mask"):
            value = mine[name]
            assert isinstance(value, np.ndarray) and value.dtype == np.int64, (
                say("reader.dtype", name=name, got=getattr(value, "dtype", type(value).__name__)))
            assert value.shape == ref[name].shape, say("reader.shape", prompt=prompt[:40], name=name,
                                                       shape=value.shape, expected=ref[name].shape,
                                                       max_tokens=MAX_TOKENS)
            assert np.array_equal(value, ref[name]), say("reader.values", prompt=prompt[:40], name=name)


def _recipe(child: Child, ctx: Ctx):
    """The student's recipe as a quantize.Recipe built here from its fields (plain data)."""
    from ..quantize import Recipe

    if "recipe" not in ctx.state:
        ctx.state["recipe"] = None
        fields = child.value("__import__('dataclasses').asdict(my_recipe)", "my_recipe (a quantize.Recipe)")
        assert isinstance(fields, dict), say("recipe.type")
        names = {f.name for f in dataclasses.fields(Recipe)}
        assert set(fields) <= names, say("recipe.fields", extra=sorted(set(fields) - names))
        fields["weight_only"] = tuple(str(x) for x in (fields.get("weight_only") or ()))
        for key in ("quant_format", "activation_type", "weight_type"):
            assert isinstance(fields.get(key), str), say("recipe.string", key=key)
        ctx.state["recipe"] = Recipe(**fields)
    if ctx.state["recipe"] is None:
        raise AssertionError(say("recipe.unreadable"))
    return ctx.state["recipe"]


def _quantized(child: Child, ctx: Ctx) -> Path:
    """The student's recipe applied here, by the referee, to its own float graph with the lab's
    calibration reader: kept per recipe, since most students choose the same."""
    from .. import artifacts, calibration, quantize
    from ..onnx_graph import load_graph
    from .trust import private_dir

    recipe = _recipe(child, ctx)
    key = hashlib.sha256(recipe.describe().encode()).hexdigest()[:16]
    out = private_dir() / "recipes" / key
    with paths.building(out):
        if not (out / paths.MODEL_FILE).is_file():
            lab = artifacts.path(ctx.state["loaded"], "int8")  # the referee's own, in trusted_artifacts
            if artifacts.is_valid(ctx.state["loaded"], "int8") and \
                    quantize.recipe_of(load_graph(lab)) == json.loads(recipe.describe()):
                # The lab's recipe, which the referee has already applied to the same float graph
                # with the same reader (for notebook 04): a copy, not another 30 s build.
                artifacts.copy_graph(lab, out / paths.MODEL_FILE)
            else:
                reader = calibration.PromptReader(ctx.state["loaded"].tokenizer)
                quantize.quantize_int8_static(ctx.state["fp32"], out, reader, recipe)
    return out / paths.MODEL_FILE


def _quantize_call(child: Child, ctx: Ctx) -> None:
    """labkit's pipeline around the student's quantize_call, run in the child on the tiny
    Qwen3's graph with layers to keep float and calibration prompts drawn here; the result
    read here against labkit's own call on the same inputs."""
    from .. import calibration, quantize
    from ..runtime import session
    from .untrusted_files import copy_in

    tiny = ctx.state["tiny"]
    fp32 = _tiny_fp32(tiny)
    copy_in(fp32.parent, child.files, "tiny-fp32")  # root writes nothing through what the child made
    # o_proj and down_proj: the linears whose input no other linear reads (q/k/v and gate/up
    # share theirs, and with it a quantizer).
    linears = [f"model.layers.{layer}.{kind}" for layer in range(tiny.model.config.num_hidden_layers)
               for kind in ("self_attn.o_proj", "mlp.down_proj")]
    keep = sorted(str(x) for x in ctx.rng.choice(linears, 2, replace=False))
    feeds = [{"input_ids": ids, "attention_mask": np.ones_like(ids)}
             for ids in (chat_ids(tiny.tokenizer, p) for p in prompts(ctx.rng, 4))]
    recipe = quantize.Recipe(weight_only=tuple(keep), smooth_alpha=None)
    child.value("str(quantize.quantize_int8_static('tiny-fp32/model.onnx', 'tiny-int8', "
                "calibration.FeedReader(probe['feeds']), quantize.Recipe(weight_only=tuple(probe['keep']), "
                "smooth_alpha=None), call=quantize_call))",
                "quantize.quantize_int8_static(float graph, out_dir, reader, recipe, call=quantize_call)",
                feeds=feeds, keep=keep)
    path = _regular_export(child, "tiny-int8", ctx.scratch / "tiny-int8")
    checks.quantize_call_types(path, quantize.default_weight_type())
    quantized, total = quantize.static_linears(path)
    assert quantized == total - len(keep), say("quant.call_static", quantized=quantized, total=total, keep=len(keep))
    reference = quantize.quantize_int8_static(fp32, ctx.scratch / "reference", calibration.FeedReader(feeds),
                                              recipe)
    float_session, mine, ours = session(fp32), session(path), session(reference)
    for feed in feeds:
        exact = float_session.run(["logits"], feed)[0]
        error = np.abs(mine.run(["logits"], feed)[0] - exact).mean()
        allowed = 1.5 * np.abs(ours.run(["logits"], feed)[0] - exact).mean() + 1e-4
        assert error <= allowed, say("quant.call_error", error=error, ours=allowed / 1.5)


def _cached_verdict(ctx: Ctx, path: Path, name: str, check: Callable[[], None]) -> None:
    """A check of a recipe's graph, kept beside it: the same recipe gets the same verdict."""
    saved = path.parent / f"verdict-{name}.{language()}.json"  # messages in the grader's LABKIT_LANG
    if not saved.is_file():
        try:
            check()
            result = {"passed": True}
        except AssertionError as exc:
            result = {"passed": False, "message": str(exc)}
        saved.write_text(json.dumps(result))
    result = json.loads(saved.read_text())
    assert result["passed"], result.get("message", "")


def _check_quantized(child, ctx):
    path = _quantized(child, ctx)
    _cached_verdict(ctx, path, "quantized-static", lambda: (checks.quantized_model(path), checks.static_share(path)))


def _check_ratio(child, ctx):
    path = _quantized(child, ctx)
    _cached_verdict(ctx, path, "ratio", lambda: checks.size_ratio(path, ctx.state["fp32"], at_most=0.30))


def _check_tokens(child, ctx):
    from .. import generate, quality
    from ..runtime import session

    path = _quantized(child, ctx)
    tokenizer = ctx.state["loaded"].tokenizer

    def check():
        int8, fp32 = session(path), session(ctx.state["fp32"])
        shares = quality.next_token_agreement(quality.session_logits(int8), quality.session_logits(fp32), tokenizer)
        checks.follows_fp32(shares, at_least=0.75)
        ids = chat_ids(tokenizer, "How many days are there in a week?")
        checks.same_first_tokens(generate.greedy_ort(int8, ids, 3), generate.greedy_ort(fp32, ids, 3), 3)

    _cached_verdict(ctx, path, "tokens", check)


def _prepare_03() -> None:
    """The sensitivity scan of the lab's calibration feeds (the kernel cannot write the cache)."""
    from .. import calibration, models, sensitivity

    loaded = models.load()
    sensitivity.scan(loaded.model, calibration.PromptReader(loaded.tokenizer).feeds)
    _prepare_graphs("fp32")


QUANT = Notebook(
    prelude=QUANT_PRELUDE,
    forbidden=["labkit.calibration.PromptReader", "labkit.calibration.KVCacheReader", "labkit.prompts.chat_ids",
               "labkit.prompts.render", "labkit.quantize.lab_recipe", "labkit.quantize.static_call"],
    context=_context_03,
    tasks={"test-reader": _reader, "test-quantize-call": _quantize_call, "check-quantized": _check_quantized, "check-ratio": _check_ratio,
           "check-tokens": _check_tokens},
    prepare=_prepare_03)


# ---------------------------------------------------------------- 04 chat

CHAT_PRELUDE = """\
import time
import numpy as np
import labkit
from labkit import artifacts, chat, chat_box, checks, generate, prompts, results, runtime
from labkit.paths import shared_dir
tokenizer = labkit.load_tokenizer()
sessions = {"FP32": runtime.session(shared_dir() / context["fp32"]),
            "INT8": runtime.session(shared_dir() / context["int8"])}
stop_ids = prompts.stop_ids(tokenizer)
"""


def _context_04(rng):
    from .. import artifacts, models, runtime

    loaded = models.load()
    graphs = {v: artifacts.ensure(loaded, v, log=lambda _: None) for v in ("fp32", "int8")}
    return Ctx(rng, {v: _shared_relative(p) for v, p in graphs.items()},
               {"tokenizer": loaded.tokenizer, "stop": stop_ids(loaded.tokenizer),
                "sessions": {v: runtime.session(p) for v, p in graphs.items()}})


LOOP_PROBE = "greedy_generate(sessions[probe['graph']], probe['ids'], probe['n'], set(probe['stop']))"


def _loop_on(graph: str, count: int, new_tokens: int, probe: str = LOOP_PROBE, name: str = "greedy_generate"):
    """The student's loop on `count` drawn prompts, token for token against labkit's."""
    def task(child: Child, ctx: Ctx) -> None:
        from ..generate import greedy_ort

        tokenizer, stop = ctx.state["tokenizer"], ctx.state["stop"]
        session = ctx.state["sessions"][graph]
        for prompt in prompts(ctx.rng, count):
            ids = chat_ids(tokenizer, prompt)
            got = child.value(probe, f"{name} on {prompt!r}", graph=graph.upper(), ids=ids, n=new_tokens,
                              stop=sorted(stop))
            checks.same_tokens(got, greedy_ort(session, ids, new_tokens, stop, guess=got), tokenizer, prompt)
    return task


def _stops(child: Child, ctx: Ctx) -> None:
    tokenizer, stop = ctx.state["tokenizer"], ctx.state["stop"]
    words = tokenizer(prompts(ctx.rng, 2)[1], add_special_tokens=False)["input_ids"][:6]
    end = sorted(stop)[int(ctx.rng.integers(len(stop)))]
    prompt_len = int(ctx.rng.integers(2, 9))
    got = child.value("greedy_generate(checks.ScriptedSession(probe['script'], probe['vocab'], probe['prompt_len']), "
                      "np.arange(1, probe['prompt_len'] + 1, dtype=np.int64)[None], 20, set(probe['stop']))",
                      "greedy_generate on a model that ends its turn", script=words + [end] + words,
                      vocab=len(tokenizer), prompt_len=prompt_len, stop=sorted(stop))
    assert isinstance(got, list) and got == words, say(
        "loop.end_of_turn", said=tokenizer.decode(words), end=tokenizer.decode([end]),
        got=tokenizer.decode(got) if isinstance(got, list) else got)


CHAT = Notebook(
    prelude=CHAT_PRELUDE,
    forbidden=LOOPS,
    context=_context_04,
    tasks={"check-fp32": _loop_on("fp32", 3, 24), "check-stop": _stops, "check-int8": _loop_on("int8", 2, 24)},
    prepare=lambda: _prepare_graphs("fp32", "int8"))


# ---------------------------------------------------------------- 05 KV cache

KV_PRELUDE = """\
import time
import numpy as np
import torch
import labkit
from labkit import (artifacts, charts, checks, export_kv, generate, models, onnx_graph, prompts, quality,
                    results, runtime)
from labkit.bench import decode_bench
tiny = models.tiny_qwen3()
from labkit.paths import shared_dir
tokenizer = labkit.load_tokenizer()
layers = context["layers"]
stop_ids = prompts.stop_ids(tokenizer)
kv_path = shared_dir() / context["kv"]
kv_session = runtime.session(kv_path)
bench = context["bench"]
"""
BENCH_ROWS = [("pytorch", "fp32", False), ("pytorch", "fp32", True), ("onnxruntime", "fp32", False),
              ("onnxruntime", "int8", False), ("onnxruntime", "fp32", True), ("onnxruntime", "int8", True),
              ("onnxruntime", "int4", True), ("onnxruntime-fused", "fp32", True), ("onnxruntime-fused", "int8", True),
              ("onnxruntime-fused", "int4", True)]


def _bench(rng) -> "object":
    """A table shaped like decode_bench's, with numbers drawn here."""
    import pandas as pd

    rows = [BENCH_ROWS[i] for i in sorted(rng.choice(len(BENCH_ROWS), int(rng.integers(4, 9)), replace=False))]
    ratio = {"fp32": 1.0, "int8": 0.26, "int4": 0.2}
    return pd.DataFrame({
        "engine": [r[0] for r in rows], "precision": [r[1] for r in rows], "cache": [r[2] for r in rows],
        "bytes": [int(5e8 * ratio[r[1]] * rng.uniform(0.9, 1.1)) for r in rows],
        "ratio": [round(ratio[r[1]] * float(rng.uniform(0.8, 1.2)), 4) for r in rows],
        "ttft_s": rng.uniform(0.01, 1.0, len(rows)).round(4), "tok_s": rng.uniform(1, 90, len(rows)).round(2),
        "peak_rss_gb": rng.uniform(0.5, 3, len(rows)).round(2), "ppl_en": rng.uniform(20, 30, len(rows)).round(2),
        "agreement": rng.uniform(0, 1, len(rows)).round(3)})


def _context_05(rng):
    from .. import artifacts, models, runtime

    loaded = models.load()
    with_cache = artifacts.ensure(loaded, "kv-fp32", log=lambda _: None)
    fp32 = artifacts.ensure(loaded, "fp32", log=lambda _: None)
    layers = loaded.model.config.num_hidden_layers
    bench = _bench(rng)
    return Ctx(rng, {"kv": _shared_relative(with_cache), "layers": layers, "bench": bench},
               {"tokenizer": loaded.tokenizer, "stop": stop_ids(loaded.tokenizer), "layers": layers,
                "no_cache": runtime.session(fp32), "kv_session": runtime.session(with_cache), "bench": bench,
                "tiny": models.tiny_qwen3()})


def _kv_wrapper(child: Child, ctx: Ctx) -> None:
    """The tiny Qwen3 exported in the child with the student's CacheWrapper: its inputs and
    outputs, and greedy tokens through its cache against the no-cache loop on labkit's
    export of the same model, on drawn prompts."""
    from .. import generate
    from ..runtime import session

    from ..export_kv import input_names, output_names

    tiny = ctx.state["tiny"]
    layers = tiny.model.config.num_hidden_layers
    child.value("str(export_kv.export_kv(tiny.model, 'kv-yours', wrapper=CacheWrapper(tiny.model), "
                "names=probe['names']))", "export_kv.export_kv(model, out_dir, wrapper=CacheWrapper(model))",
                names=[input_names(layers), output_names(layers)])
    path = _regular_export(child, "kv-yours", ctx.scratch / "kv-yours")
    checks.kv_graph(path, layers)
    cached, no_cache = session(path), session(_tiny_fp32(tiny))
    stop = stop_ids(tiny.tokenizer)
    for prompt in prompts(ctx.rng, 3):
        ids = chat_ids(tiny.tokenizer, prompt)
        got = generate.generate(generate.KVCache(cached), ids, max_new_tokens=16, stop=stop).tokens
        checks.same_tokens(got, generate.greedy_ort(no_cache, ids, 16, stop, guess=got), tiny.tokenizer, prompt)


def _cache_names(child: Child, ctx: Ctx) -> None:
    from ..export_kv import PAST, input_names

    for layers in sorted({ctx.state["layers"], int(ctx.rng.integers(1, 40))}):
        got = child.value("cache_input_names(probe['layers'])", f"cache_input_names({layers})", layers=layers)
        expected = [n for n in input_names(layers) if n.startswith(PAST)]
        assert isinstance(got, (list, tuple)) and list(got) == expected, say(
            "kv.cache_names", call=f"cache_input_names({layers})", expected=expected[:3], n=len(expected),
            got=list(got)[:3] if isinstance(got, (list, tuple)) else got)


CACHED_PROBE = "cached_generate(kv_session, probe['ids'], probe['n'], set(probe['stop']))"


def _cached_tokens(child: Child, ctx: Ctx) -> None:
    from ..generate import greedy_ort

    tokenizer, stop = ctx.state["tokenizer"], ctx.state["stop"]
    for prompt in prompts(ctx.rng, 3):
        ids = chat_ids(tokenizer, prompt)
        got = child.value(CACHED_PROBE, f"cached_generate on {prompt!r}", ids=ids, n=24, stop=sorted(stop))
        checks.same_tokens(got, greedy_ort(ctx.state["no_cache"], ids, 24, stop, guess=got), tokenizer, prompt)


def _speed(child: Child, ctx: Ctx) -> None:
    """The student's loop timed here (a round trip through the child) against the same KV
    graph recomputing the whole sequence every step, timed here too; its tokens must be
    right. Three prompts the student's function has never seen: the first warms it up, the
    other two are timed. (Timing one prompt twice let a memo of the first answer pass, and
    notebook 02's no-cache graph, slower than the KV graph, let a loop with no cache pass.)"""
    import time

    from ..generate import Recompute, generate, greedy_ort

    tokenizer = ctx.state["tokenizer"]
    drawn = [np.asarray(ctx.rng.integers(1000, min(len(tokenizer), 30000), 256), np.int64)[None] for _ in range(3)]
    times, slow = [], []
    for n, ids in enumerate(drawn):
        reply = child.run(CACHED_PROBE, ids=ids, n=8, stop=[])
        if not reply.ok:
            raise AssertionError(say("kv.speed_raised", error=reply.error))
        if n == 0:
            continue
        times.append(reply.seconds)
        started = time.perf_counter()
        generate(Recompute(ctx.state["kv_session"]), ids, max_new_tokens=8, stop=set())
        slow.append(time.perf_counter() - started)
        checks.same_tokens(reply.value, greedy_ort(ctx.state["no_cache"], ids, 8, guess=reply.value), tokenizer,
                           "a 256-token prompt")
    speedup = min(slow) / min(times)
    assert speedup > checks.CACHE_SPEEDUP, say("kv.slower", speedup=speedup, needed=checks.CACHE_SPEEDUP)


def _summary(child: Child, ctx: Ctx) -> None:
    got = child.value("summary", "summary")
    import pandas as pd

    assert isinstance(got, pd.DataFrame), say("summary.type", kind=type(got).__name__)
    checks.summary_frame(got, ctx.state["bench"])


def _prepare_05() -> None:
    """The KV graphs and the benchmark table notebook 05 reuses (the same for every student)."""
    from ..bench import decode_bench

    loaded = _prepare_graphs("fp32", "kv-fp32", "kv-int8")  # the model, loaded once
    decode_bench.run(loaded, lengths=(256,), peers=False, reuse=True, log=lambda _: None)


KV = Notebook(
    prelude=KV_PRELUDE,
    forbidden=LOOPS + ["labkit.export_kv.input_names", "labkit.export_kv.output_names", "labkit.export_kv.KVWrapper"],
    context=_context_05,
    tasks={"test-kv-wrapper": _kv_wrapper, "check-graph": _cache_names, "check-cached-tokens": _cached_tokens, "check-speed": _speed,
           "check-summary": _summary},
    prepare=_prepare_05)


NOTEBOOKS = {"01_env": ENV, "02_export": EXPORT, "03_quant": QUANT, "04_chat": CHAT, "05_kvcache": KV}


def forbidden() -> list[str]:
    """Every notebook's answers: one child serves a submission's notebooks in turn."""
    return sorted({name for notebook in NOTEBOOKS.values() for name in notebook.forbidden})
