"""The referee: labkit without its answers, the wire, the integrity signs, and for notebooks
02-05 a submission that reaches for labkit's answers (each task through another route) and
one that is correct but written unlike the reference. Notebook 01's cases run end to end
through `labkit grade` in test_grading_class.py."""
import numpy as np
import pytest

from conftest import REPO
from labkit.grading import child, course, integrity, lockdown, referee, trust, verdicts, wire
from nbgrader_course import graded_points

SOURCE, RELEASE = REPO / "source" / course.ASSIGNMENT, REPO / "release" / course.ASSIGNMENT


# ---------------------------------------------------------------- the pieces

def test_every_answer_the_verdicts_name_is_stripped_to_a_stub(tmp_path):
    import importlib
    import inspect
    import sys

    package = lockdown.strip(verdicts.forbidden(), tmp_path)
    sys.path.insert(0, str(tmp_path))
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "labkit"}
    try:
        for qualname in verdicts.forbidden():
            module_name, _, attr = qualname.rpartition(".")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except ModuleNotFoundError:  # a method: labkit.chat.Chat._render
                owner_module, _, owner = module_name.rpartition(".")
                obj = getattr(getattr(importlib.import_module(owner_module), owner), attr)
            assert obj.__module__.startswith("labkit"), qualname
            assert str(package) in (sys.modules[obj.__module__].__file__ or ""), qualname
            fresh = importlib.import_module("labkit.grading.lockdown")
            calls = [getattr(v, "__func__", v) for v in vars(obj).values()
                     if inspect.isfunction(getattr(v, "__func__", v))] if isinstance(obj, type) else [obj]
            assert calls, qualname
            for call in calls:
                required = [p for p in inspect.signature(call).parameters.values()
                            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                with pytest.raises(fresh.Delegation, match=qualname.replace(".", r"\.")):
                    call(*([None] * len(required)))
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "labkit"]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path.remove(str(tmp_path))


def test_a_name_that_is_not_in_labkit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no_such_function"):
        lockdown.strip(["labkit.generate.no_such_function"], tmp_path)


def test_the_wire_carries_what_the_checks_need_and_no_code():
    import pandas as pd
    import torch

    value = {"ids": np.arange(6, dtype=np.int64).reshape(2, 3), "t": torch.ones(2), "n": np.int64(3),
             "x": (1, 2.5, float("nan")), "s": {3, 4}, "frame": pd.DataFrame({"a": ["x", "y"], "b": [1.0, 2.0]})}
    back = wire.decode(wire.encode(value))
    assert np.array_equal(back["ids"], value["ids"]) and back["ids"].dtype == np.int64
    assert torch.equal(back["t"], value["t"]) and type(back["n"]) is np.int64
    assert back["x"][:2] == (1, 2.5) and np.isnan(back["x"][2]) and back["s"] == {3, 4}
    assert back["frame"].equals(value["frame"])
    assert isinstance(wire.decode(wire.encode(object())), wire.Unknown)


def test_integrity_signs_name_the_cell_and_what_matched():
    found = integrity.scan(["def f():\n    return 1\n", "print(open('../../../gradebook.db').read())",
                            "from labkit import checks\nchecks.same_tokens = lambda *a: None"])
    assert found == ["cell 2: reaching for the instructor's files (gradebook)",
                     "cell 3: changing the checks (from labkit import checks)"]


def test_the_same_student_gets_the_same_draws_and_another_student_others(tmp_path):
    key = trust.course_key(tmp_path)
    assert (tmp_path / trust.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert trust.course_key(tmp_path) == key
    assert trust.seed(key, "alice", "04_chat") == trust.seed(key, "alice", "04_chat")
    assert len({trust.seed(key, s, n) for s in ("alice", "bob") for n in ("04_chat", "05_kvcache")}) == 4
    rng = np.random.default_rng(trust.seed(key, "alice", "04_chat"))
    chosen = verdicts.prompts(rng, 4)
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in chosen)  # half Chinese
    assert any(p.isascii() for p in chosen)


# ---------------------------------------------------------------- notebooks 02-05

KV_WRAPPER_DIFFERENT = """\
import transformers


class CacheWrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past):
        cache = transformers.DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(zip(past[0::2], past[1::2])):
            cache.update(keys, values, layer)
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, return_dict=True)
        flat = [out.logits]
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return tuple(flat)
"""

DIFFERENT = {
    "02_export": {
        "wrapper": """\
class Wrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        return out["logits"]
""",
        "dynamic-shapes": """\
from torch.export import Dim


def make_dynamic_shapes():
    shared = {0: Dim("b"), 1: Dim("s", max=4096)}
    return (shared, dict(shared))
""",
        "patch": """import transformers.masking_utils as masking


class index_based_mask:
    def __enter__(self):
        self.table = masking.AttentionMaskInterface._global_mapping
        self.saved = saved = self.table["sdpa"]
        self.table["sdpa"] = lambda *args, **kwargs: saved(*args, **dict(kwargs, use_vmap=False))
        return self

    def __exit__(self, *error):
        self.table["sdpa"] = self.saved
        return False
""",
        "export-call": """def export_model(wrapper, example, onnx_file):
    with patches.export_patches():
        torch.onnx.export(wrapper, example, f=str(onnx_file), dynamo=True, external_data=True, optimize=True,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes=make_dynamic_shapes())
"""},
    "03_quant": {
        "reader": """\
import numpy as np

MAX_TOKENS = 256


def make_feed(tokenizer, prompt):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    ids = np.array(ids[:MAX_TOKENS], dtype=np.int64).reshape(1, -1)
    return dict(input_ids=ids, attention_mask=np.ones(ids.shape, dtype=np.int64))


class Reader(CalibrationDataReader):
    def __init__(self, tokenizer, prompts):
        self.feeds = [make_feed(tokenizer, p) for p in prompts]
        self.rewind()

    def get_next(self):
        return next(self._left, None)

    def rewind(self):
        self._left = iter(self.feeds)

    def __len__(self):
        return len(self.feeds)
""",
        "recipe": """\
layers = loaded.model.config.num_hidden_layers
keep_float = list(sensitive)
for i in range(layers):
    keep_float.append("model.layers.%d.self_attn.o_proj" % i)
my_recipe = quantize.Recipe(quant_format="QDQ", activation_type="u8", weight_type=quantize.default_weight_type(),
                            per_channel=True, weights_only_matmuls=True, smooth_alpha=0.6,
                            weight_only=tuple(keep_float), share_embedding=True)
""",
        "quantize-call": """from onnxruntime import quantization as q


def quantize_call(float_path, out_path, reader, ranges_file, keep_float):
    options = dict(quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QUInt8,
                   weight_type={"s8": q.QuantType.QInt8, "u8": q.QuantType.QUInt8}[quantize.default_weight_type()],
                   per_channel=True, op_types_to_quantize=["MatMul"], nodes_to_exclude=list(keep_float),
                   calibration_cache_path=ranges_file, use_external_data_format=True,
                   extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})
    q.quantize_static(model_input=str(float_path), model_output=str(out_path), calibration_data_reader=reader,
                      **options)
"""},
    "04_chat": {
        "loop": """\
def greedy_generate(session, prompt_ids, max_new_tokens, stop_ids):
    sequence = list(np.asarray(prompt_ids).reshape(-1))
    produced = []
    while len(produced) < max_new_tokens:
        ids = np.array([sequence], dtype=np.int64)
        (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        best = int(np.argmax(logits[0, -1, :]))
        if best in stop_ids:
            return produced
        produced.append(best)
        sequence.append(best)
    return produced
"""},
    "05_kvcache": {
        "kv-wrapper": KV_WRAPPER_DIFFERENT,
        "names": """\
def cache_input_names(layers):
    names = []
    for layer in range(layers):
        names.append("past_key_values.%d.key" % layer)
        names.append("past_key_values.%d.value" % layer)
    return names
""",
        "loop": """\
def cached_generate(session, prompt_ids, max_new_tokens, stop_ids):
    inputs = session.get_inputs()
    past_names = [i.name for i in inputs if i.name.startswith("past_key_values.")]
    kv_heads, head_dim = inputs[3].shape[1], inputs[3].shape[3]
    cache = {name: np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32) for name in past_names}
    step_ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    seen, out = 0, []
    for _ in range(max_new_tokens):
        new = step_ids.shape[1]
        results = session.run(None, {"input_ids": step_ids,
                                     "position_ids": np.arange(seen, seen + new, dtype=np.int64).reshape(1, -1),
                                     "attention_mask": np.ones((1, seen + new), dtype=np.int64), **cache})
        seen += new
        cache = {name.replace("present.", "past_key_values."): value
                 for name, value in zip([o.name for o in session.get_outputs()][1:], results[1:])}
        token = int(results[0][0, -1].argmax())
        if token in stop_ids:
            break
        out.append(token)
        step_ids = np.array([[token]], dtype=np.int64)
    return out
""",
        "summary": """\
import pandas as pd

rows = []
for _, row in bench.iterrows():
    rows.append({"engine": row["engine"], "precision": row["precision"], "cache": row["cache"],
                 "compression": 1.0 / row["ratio"], "tok_s": row["tok_s"]})
summary = pd.DataFrame(rows, columns=["engine", "precision", "cache", "compression", "tok_s"])
"""},
}

# Each task's answer reached through another route: a subclass, an alias, getattr, a reload,
# labkit's module imported inside the function, its file loaded again as a new module.
DELEGATING = {
    "02_export": ({"wrapper": "class Wrapper(export.LogitsWrapper):\n    pass\n",
                   "dynamic-shapes": "from labkit.export import dynamic_shapes as make_dynamic_shapes\n"},
                  {"test-patch"}, ["labkit.export.LogitsWrapper", "labkit.export.dynamic_shapes"]),
    # The wrapper written, the patch and the export call labkit's: the graph checks fail too.
    "02_export:patch-and-call": ({"patch": "index_based_mask = patches.index_based_attention_mask\n",
                                  "export-call": "def export_model(wrapper, example, onnx_file):\n"
                                                 "    getattr(export, 'torch_' + 'export')(wrapper, example, onnx_file)\n"},
                                 {"test-wrapper", "test-dynamic-shapes"},
                                 ["labkit.patches.index_based_attention_mask", "labkit.export.torch_export"]),
    "03_quant": ({"reader": DIFFERENT["03_quant"]["reader"].replace(
                      "    ids = tokenizer.apply_chat_template", "    return calibration.PromptReader._feed("
                      "tokenizer, prompt, MAX_TOKENS)\n    ids = tokenizer.apply_chat_template"),
                  "recipe": "my_recipe = getattr(quantize, 'lab_' + 'recipe')(loaded.model, None)\n",
                  "quantize-call": "quantize_call = quantize.static_call\n"},
                 set(), ["labkit.calibration.PromptReader._feed", "labkit.quantize.lab_recipe",
                         "labkit.quantize.static_call"]),
    "04_chat": ({"loop": """\
import importlib
import labkit.generate as g
importlib.reload(g)


def greedy_generate(session, prompt_ids, max_new_tokens, stop_ids):
    return g.generate(g.NoCache(session), prompt_ids, max_new_tokens=max_new_tokens, stop=stop_ids).tokens
"""}, set(), ["labkit.generate.NoCache"]),
    "05_kvcache": ({"kv-wrapper": "class CacheWrapper(export_kv.KVWrapper):\n    pass\n",
                    "names": "from labkit.export_kv import input_names\n\n\ndef cache_input_names(layers):\n"
                             "    return input_names(layers)[3:]\n",
                    "loop": """\
import importlib.util
import sys
import labkit.generate

spec = importlib.util.spec_from_file_location("labkit.copied", labkit.generate.__file__)
copied = sys.modules["labkit.copied"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(copied)


def cached_generate(session, prompt_ids, max_new_tokens, stop_ids):
    return copied.generate(copied.KVCache(session), prompt_ids, max_new_tokens=max_new_tokens,
                           stop=stop_ids).tokens
"""}, {"check-summary"}, ["labkit.export_kv.KVWrapper", "labkit.export_kv.input_names", "labkit.generate.KVCache"]),
}


def _grade(tmp_path, name, overrides, student):
    import nbformat

    out = course.write_submission(RELEASE / f"{name}.ipynb", SOURCE / f"{name}.ipynb",
                                  tmp_path / f"{name}.ipynb", overrides=overrides)
    report = referee.grade_notebook(name, nbformat.read(out, as_version=4), 20261129, student)
    points = graded_points(SOURCE / f"{name}.ipynb")
    assert set(report.verdicts) == set(points), "every graded cell has a verdict"
    return report, sum(points[g] for g, v in report.verdicts.items() if v.passed), points


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_a_correct_submission_written_differently_keeps_full_marks(tmp_path, name):
    report, score, points = _grade(tmp_path, name, DIFFERENT[name], f"different-{name}")
    assert {g: v.message for g, v in report.verdicts.items() if not v.passed} == {}
    assert score == sum(points.values())
    assert report.integrity == []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DELEGATING))
def test_reaching_for_labkits_answers_scores_zero_on_those_tasks_and_is_flagged(tmp_path, name):
    overrides, keep, reached = DELEGATING[name]
    report, score, points = _grade(tmp_path, name.split(":")[0], overrides, f"delegating-{name.replace(':', '-')}")
    assert score == sum(points[g] for g in keep)
    assert {g for g, v in report.verdicts.items() if v.passed} == keep
    for qualname in reached:
        assert f"{name.split(':')[0]}: called {qualname}" in report.integrity
    assert any("labkit's reference answers" in v.message or "write it yourself" in v.message
               for v in report.verdicts.values())


@pytest.mark.slow
def test_a_wrapper_that_drops_the_past_and_a_memoised_loop_lose_only_their_tasks(tmp_path):
    """Wrong work, not delegation: the model called without the cache it was handed (its
    graph has every name and a right prefill; its decode steps see no past). And a loop with
    no cache at all, slow, that memoises its answers (issue 39): the speed check used to time
    one prompt twice and keep the faster run, which the memo answered at once; its tokens are
    right, so it loses the speed check only."""
    forgetful = KV_WRAPPER_DIFFERENT.replace("past_key_values=cache, ", "")
    report, score, points = _grade(tmp_path, "05_kvcache", {**DIFFERENT["05_kvcache"], "kv-wrapper": forgetful,
                                                            "loop": MEMOISED_LOOP}, "forgetful")
    assert {g for g, v in report.verdicts.items() if not v.passed} == {"test-kv-wrapper", "check-speed"}
    assert score == sum(points.values()) - points["test-kv-wrapper"] - points["check-speed"]
    assert "tokens" in report.verdicts["test-kv-wrapper"].message
    assert "as fast as recomputing the whole sequence" in report.verdicts["check-speed"].message
    assert report.integrity == []


@pytest.mark.slow
def test_the_child_starts_before_the_kernel_and_then_grades_the_notebook(tmp_path):
    """nbgrader's preparation step starts the submission's child without waiting for its
    imports, which then overlap the kernel; the referee grades with that same child. A
    notebook that is not the lab's starts none."""
    referee.prepare("my_own_notebook", "early")
    assert "early" not in referee._CHILDREN
    referee.prepare("01_env", "early")
    child = referee._CHILDREN["early"]
    assert child.ready is False and child.proc.poll() is None
    try:
        report, score, points = _grade(tmp_path, "01_env", {}, "early")
        assert referee._CHILDREN["early"] is child and child.ready
        assert score == sum(points.values()) and report.integrity == []
    finally:
        referee._CHILDREN.pop("early").close()


@pytest.mark.slow
def test_a_cell_nbgrader_stopped_at_its_limit_gets_a_short_second_run(tmp_path):
    """A cell that defines its answer and then loops forever: nbgrader stopped it at the
    limit, so the child runs it again for TIMED_OUT_CELL_S, not for another full limit, and
    what it defined before the loop still counts. Another cell, not stopped, keeps the full
    limit."""
    import nbformat

    def grade_id(cell):
        return cell.metadata.get("nbgrader", {}).get("grade_id")

    answers = {grade_id(c): course.solution_code(c.source)
               for c in nbformat.read(SOURCE / "01_env.ipynb", as_version=4).cells}
    out = course.write_submission(RELEASE / "01_env.ipynb", SOURCE / "01_env.ipynb", tmp_path / "01_env.ipynb",
                                  overrides={"param-count": answers["param-count"] + "\nwhile True:\n    pass\n",
                                             "weight-bytes": "import time\ntime.sleep(8)\n" + answers["weight-bytes"]})
    nb = nbformat.read(out, as_version=4)
    stopped = frozenset(i for i, c in enumerate(nb.cells) if grade_id(c) == "param-count")
    try:
        report = referee.grade_notebook("01_env", nb, 20261129, "stopped", cell_s=30, timed_out=stopped)
        assert {g: v.message for g, v in report.verdicts.items() if not v.passed} == {}
        errors = [c["error"] for c in referee._CHILDREN["stopped"].cells if not c["ok"]]
    finally:
        referee._CHILDREN.pop("stopped").close()
    assert len(errors) == 1 and errors[0].startswith(
        f"TimeoutError: stopped after {child.TIMED_OUT_CELL_S:.0f} s "
        "(it had already run past the 30 s limit in your notebook) (cell 2, line"), errors


@pytest.mark.slow
def test_a_check_that_cannot_use_the_answer_or_a_probe_that_hangs_costs_its_task_only(tmp_path, monkeypatch):
    """Issue 39: a forgotten `return` (the check's own TypeError, in nbgrader's process, used
    to fail the whole submission) and a probe that blocks the child's alarm and never returns
    (the next task then hit a closed pipe). Each fails its own task with a message that says
    what happened; the child is replaced and the notebook's other tasks score."""
    import nbformat

    answers = {c.metadata.get("nbgrader", {}).get("grade_id"): course.solution_code(c.source)
               for c in nbformat.read(SOURCE / "01_env.ipynb", as_version=4).cells}
    forgot_return = answers["param-count"].replace("    return embedding", "    embedding")
    hangs = ("import signal, time\n\n\ndef weight_bytes(n_params, dtype):\n"
             "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n    time.sleep(3600)\n")
    monkeypatch.setattr(child, "PROBE_S", 4.0)
    monkeypatch.setattr(child, "GRACE_S", 2.0)
    out = course.write_submission(RELEASE / "01_env.ipynb", SOURCE / "01_env.ipynb", tmp_path / "01_env.ipynb",
                                  overrides={"param-count": forgot_return, "weight-bytes": hangs})
    try:
        report = referee.grade_notebook("01_env", nbformat.read(out, as_version=4), 20261129, "slips")
    finally:
        referee._CHILDREN.pop("slips").close()
    failed = {g: v.message for g, v in report.verdicts.items() if not v.passed}
    assert set(failed) == {"test-param-count", "test-weight-bytes"}, failed
    assert "the check could not use your result: TypeError" in failed["test-param-count"]
    assert "did not finish in time (6 s)" in failed["test-weight-bytes"]  # PROBE_S + GRACE_S
    points = graded_points(SOURCE / "01_env.ipynb")
    assert sum(points[g] for g, v in report.verdicts.items() if v.passed) == (
        sum(points.values()) - points["test-param-count"] - points["test-weight-bytes"])


MEMOISED_LOOP = """\
import time

_answers = {}


def cached_generate(session, prompt_ids, max_new_tokens, stop_ids):
    key = (np.asarray(prompt_ids).tobytes(), max_new_tokens, tuple(sorted(stop_ids)))
    if key not in _answers:
        time.sleep(0.5)
        names = [i.name for i in session.get_inputs()]
        kv_heads, head_dim = session.get_inputs()[3].shape[1], session.get_inputs()[3].shape[3]
        empty = {n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in names if n.startswith("past_key_values.")}
        sequence, out = list(np.asarray(prompt_ids).reshape(-1)), []
        for _ in range(max_new_tokens):
            ids = np.array([sequence], dtype=np.int64)
            logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                              "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None], **empty})[0]
            token = int(logits[0, -1].argmax())
            if token in stop_ids:
                break
            out.append(token)
            sequence.append(token)
        _answers[key] = out
    return list(_answers[key])
"""

GAMING = {
    # The patch task with no patch: the vmap mask path turned off and `observe` answering "all
    # done" (both names the task's own probes used to evaluate in the child).
    "02_export": ({"patch": """\
import contextlib

mask_patch.vmap_mask_path = contextlib.nullcontext
mask_patch.observe = lambda patch: {"replaced": True, "restored": True, "error_passed": True,
                                    "restored_after_error": True}


def index_based_mask():
    return contextlib.nullcontext()
"""}, "test-patch"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GAMING))
def test_points_from_the_referees_own_probes_are_gone(tmp_path, name):
    """Issue 39: a submission that rebinds the helpers a probe used
    loses exactly the task it gamed; the rest of the notebook is the reference's work and
    keeps its points. (The memoised loop of notebook 05 is graded beside the forgetful
    wrapper above: one grading of notebook 05 less.)"""
    overrides, gamed = GAMING[name]
    report, score, points = _grade(tmp_path, name, {**DIFFERENT[name], **overrides}, f"gaming-{name}")
    assert {g for g, v in report.verdicts.items() if not v.passed} == {gamed}, report.verdicts
    assert score == sum(points.values()) - points[gamed]


def test_a_notebooks_deadline_does_not_grow_with_the_cells_a_student_adds():
    """Each cell has its own limit in the child; a child that blocks its alarm is stopped by
    the referee's deadline for the whole notebook, which has a ceiling: 2,000 padding cells
    used to buy 2,000 cell limits (days under plain nbgrader autograde)."""
    asked = []
    handle = child.Child.__new__(child.Child)  # no process: what it would ask for, and how long it would wait
    handle._ask = lambda message, timeout: asked.append(timeout) or {"cells": []}
    handle.notebook("", {}, ["pass"] * 2000, cell_s=120)
    handle.notebook("", {}, ["pass"] * 3, cell_s=120)
    ceiling = child.CHILD_START_S + child.NOTEBOOK_S + child.GRACE_S
    assert asked == [ceiling, child.CHILD_START_S + 3 * 120 + child.GRACE_S]


@pytest.mark.slow
def test_a_child_that_blows_up_its_output_file_is_read_from_the_end_only(tmp_path):
    """The child's output is a file the child can make any size (a sparse 15 GiB here, under
    the sandbox's 16 GiB file limit): the referee reads its last few KB for the message,
    instead of all of it into memory, and the notebook's tasks fail saying how it ended."""
    import nbformat

    blow_up = "import os, sys\nprint('last words', flush=True)\nos.ftruncate(1, 15 * 2**30)\nos._exit(3)\n"
    out = course.write_submission(RELEASE / "01_env.ipynb", SOURCE / "01_env.ipynb", tmp_path / "01_env.ipynb",
                                  overrides={"weight-bytes": blow_up})
    try:
        report = referee.grade_notebook("01_env", nbformat.read(out, as_version=4), 20261129, "blows-up")
        assert referee._CHILDREN["blows-up"].log_tail().endswith("\0" * 16)  # the sparse end, and no more
    finally:
        referee._CHILDREN.pop("blows-up").close()
    messages = {v.message for v in report.verdicts.values()}
    assert len(messages) == 1 and "exit code 3" in messages.pop()
