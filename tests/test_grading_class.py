"""`labkit grade` on a class of awkward submissions: each case is a submission of notebook 01
built for it, graded in parallel on a Dask LocalCluster of two worker processes, merged into
the course gradebook and checked against the score it should get."""
import html
import re
import shutil
import uuid

import nbformat
import pytest
from nbgrader.api import Gradebook

from labkit import course, grading, paths
from nbgrader_course import edit_cell, hidden_test_lines

pytestmark = pytest.mark.slow
NB = "01_env.ipynb"
LIMITS = grading.Limits(submission_s=600, cell_s=30, memory_gb=6)

WRONG_WEIGHT_BYTES = "def weight_bytes(n_params, dtype):\n    return n_params * 4  # forgot the dtype\n"
OTHER_WEIGHT_BYTES = """\
def weight_bytes(n_params: int, dtype: str) -> int:
    if dtype == "fp32":
        return 4 * n_params
    if dtype in ("fp16", "bf16"):
        return 2 * n_params
    if dtype == "int8":
        return n_params
    if dtype == "int4":
        return (n_params + 1) // 2
    raise ValueError(dtype)
"""
OTHER_PARAM_COUNT = """\
def qwen3_param_count(cfg) -> int:
    h, q = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    shapes = [(cfg.vocab_size, h)]
    for _ in range(cfg.num_hidden_layers):
        shapes += [(h, q), (h, kv), (h, kv), (q, h), (h, cfg.intermediate_size),
                   (h, cfg.intermediate_size), (cfg.intermediate_size, h),
                   (h,), (h,), (cfg.head_dim,), (cfg.head_dim,)]
    shapes.append((h,))
    if not cfg.tie_word_embeddings:
        shapes.append((cfg.vocab_size, h))
    total = 0
    for shape in shapes:
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total
"""
OTHER_COUNT_TOKENS = """\
def count_tokens(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return len(ids)
"""
NOISY_COUNT_TOKENS = """\
import sys
import warnings

warnings.warn("my own warning, printed to stderr")

def count_tokens(tokenizer, text: str) -> int:
    print("debug: counting", file=sys.stderr)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
"""
MEETING = uuid.uuid4().hex


def writes_artifacts(me: str, other: str) -> str:
    """Two submissions graded at the same moment each write their name to the same file of
    their artifacts folder; each must read back its own, as on a student's own machine."""
    return f"""\
import time
from labkit import paths

def wait_for(flag):
    for _ in range(100):
        if flag.exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"{{flag.name}} never came: the two were not graded at the same time")

meeting = paths.shared_dir() / "meeting-{MEETING}"
meeting.mkdir(exist_ok=True)
(meeting / "{me}-started").touch()
wait_for(meeting / "{other}-started")
(paths.artifacts_dir() / "mine.txt").write_text("{me}")
(meeting / "{me}-wrote").touch()
wait_for(meeting / "{other}-wrote")
assert (paths.artifacts_dir() / "mine.txt").read_text() == "{me}", "another submission overwrote my file"
""" + OTHER_WEIGHT_BYTES


# student: (answers written into the solution cells, edits to the notebook, score, problems)
CASES = {
    "solver": ({}, [], 7, []),
    "different": ({"weight-bytes": OTHER_WEIGHT_BYTES, "param-count": OTHER_PARAM_COUNT,
                   "count-tokens": OTHER_COUNT_TOKENS}, [], 7, []),
    "deleted_test": ({}, [("test-weight-bytes", dict(delete=True))], 7, []),
    "edited_test": ({"weight-bytes": WRONG_WEIGHT_BYTES},
                    [("test-weight-bytes", dict(source="assert True"))], 5,
                    ["test-weight-bytes: AssertionError: FP16 stores each weight in 2 bytes"]),
    "markdown_test": ({}, [("test-param-count", dict(cell_type="markdown"))], 7, []),
    "renamed": ({}, [("rename", {})], 0, ["01_env: not submitted (handed in: 01_env-Copy1.ipynb)"]),
    "raises": ({"weight-bytes": 'raise RuntimeError("I broke it")'}, [], 5,
               ["weight-bytes: RuntimeError: I broke it", "test-weight-bytes: NameError"]),
    "loops": ({"param-count": "while True:\n    pass\n" + OTHER_PARAM_COUNT}, [], 4,
              ["param-count: CellTimeoutError", "test-param-count: NameError"]),
    "memory": ({"count-tokens": "import numpy as np\nhog = [np.ones(2**25) for _ in range(10**6)]\n"
                + OTHER_COUNT_TOKENS}, [], 5,
               ["count-tokens: MemoryError", "test-count-tokens: NameError"]),
    "noisy": ({"count-tokens": NOISY_COUNT_TOKENS}, [], 7, []),
    "one_wrong": ({"weight-bytes": WRONG_WEIGHT_BYTES}, [], 5,
                  ["test-weight-bytes: AssertionError: FP16 stores each weight in 2 bytes"]),
}


def _submit(root, student, answers, edits):
    release, source = root / "release" / course.ASSIGNMENT, root / "source" / course.ASSIGNMENT
    folder = root / "submitted" / student / course.ASSIGNMENT
    out = course.write_submission(release / NB, source / NB, folder / NB, overrides=answers)
    for grade_id, how in edits:
        if grade_id == "rename":
            out.rename(folder / "01_env-Copy1.ipynb")
        else:
            edit_cell(out, grade_id, **how)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = course.make_course(tmp_path_factory.mktemp("class"), notebooks=[NB])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    for student, (answers, edits, _, _) in CASES.items():
        _submit(root, student, answers, edits)
    table = grading.grade_class(root, workers=2, limits=LIMITS, progress=False)
    return root, table.set_index("student")


@pytest.mark.parametrize("student", CASES)
def test_each_submission_gets_the_score_it_earned(graded, student):
    root, table = graded
    *_, score, problems = CASES[student]
    assert course.submission_scores(root)[student] == (score, 7)
    assert table.loc[student, "score"] == score
    found = table.loc[student, "problems"]
    assert [p for p in problems if p not in found] == [], found
    if not problems:
        assert found == ""


def test_submissions_graded_at_once_keep_their_own_files(tmp_path):
    root = course.make_course(tmp_path, notebooks=[NB])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    _submit(root, "writer_a", {"weight-bytes": writes_artifacts("writer_a", "writer_b")}, [])
    _submit(root, "writer_b", {"weight-bytes": writes_artifacts("writer_b", "writer_a")}, [])
    try:
        table = grading.grade_class(root, workers=2, limits=LIMITS, progress=False)
    finally:
        shutil.rmtree(paths.shared_dir() / f"meeting-{MEETING}", ignore_errors=True)
    assert table["problems"].tolist() == ["", ""]
    assert course.submission_scores(root) == {"writer_a": (7, 7), "writer_b": (7, 7)}


def test_the_summary_is_written_as_csv(graded):
    import pandas as pd

    root, table = graded
    saved = pd.read_csv(root / "grading_summary.csv", keep_default_na=False).set_index("student")
    assert sorted(saved.index) == sorted(CASES)
    assert (saved["score"] == table["score"]).all()
    assert set(saved["status"]) == {"graded", "failed"}  # only the renamed notebook fails nbgrader
    assert saved.loc["renamed", "status"] == "failed"


def test_merged_grades_equal_nbgrader_run_in_the_course(graded):
    """The reference: nbgrader's own autograde of the same submission in the course itself."""
    root, _ = graded

    def grades():
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
            nb = gb.find_submission_notebook("01_env", course.ASSIGNMENT, "one_wrong")
            return {g.name: (g.auto_score, g.needs_manual_grade) for g in nb.grades}

    merged = grades()
    result = course.grading_api(root).autograde(course.ASSIGNMENT, "one_wrong", force=True)
    assert result["success"], result["log"]
    assert grades() == merged


def test_regrading_one_student_gives_the_same_score(graded):
    root, table = graded
    again = grading.grade_class(root, students=["solver"], workers=1, limits=LIMITS, progress=False,
                                csv=root / "regrade.csv")
    assert again.loc[0, "score"] == table.loc["solver", "score"] == 7
    assert course.submission_scores(root)["solver"] == (7, 7)


def test_a_submission_over_its_time_limit_is_stopped_and_the_batch_goes_on(graded):
    root, _ = graded
    slow = grading.Limits(submission_s=60, cell_s=600, memory_gb=6)
    table = grading.grade_class(root, students=["loops", "solver"], workers=2, limits=slow,
                                progress=False, csv=root / "slow.csv").set_index("student")
    assert table.loc["loops", "status"] == "timed out"
    assert "stopped at the 60 s limit" in table.loc["loops", "problems"]
    assert course.submission_scores(root)["loops"] == (0, 7)
    assert table.loc["solver", "score"] == 7
    assert _processes_in("labkit-grade-loops-") == []  # the looping kernel did not outlive its limit


def _processes_in(folder_prefix: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if folder_prefix in p.cwd():
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_feedback_shows_messages_but_no_hidden_test(graded):
    root, _ = graded
    api = course.grading_api(root)
    assert api.generate_feedback(course.ASSIGNMENT, "one_wrong")["success"]
    page = (root / "feedback" / "one_wrong" / course.ASSIGNMENT / "01_env.html").read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    hidden = hidden_test_lines(root / "source" / course.ASSIGNMENT / NB)
    autograded = root / "autograded" / "one_wrong" / course.ASSIGNMENT / NB
    graded_source = "\n".join(c.source for c in nbformat.read(autograded, as_version=4).cells)
    assert hidden and all(line in graded_source for line in hidden), "the check would prove nothing"
    assert [line for line in hidden if " ".join(line.split()) in text] == []
    assert "AssertionError: FP16 stores each weight in 2 bytes" in text


def test_a_course_that_is_not_ready_gets_a_clear_error(tmp_path, capsys):
    from labkit.__main__ import main

    root = course.make_course(tmp_path / "course", notebooks=[NB])
    with pytest.raises(grading.GradingSetupError, match="nbgrader generate_assignment llm_lab"):
        grading.make_jobs(root)
    assert main(["grade", "--course", str(root)]) == 1
    assert "run `nbgrader generate_assignment llm_lab` there first" in capsys.readouterr().err
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    with pytest.raises(grading.GradingSetupError, match="nothing to grade"):
        grading.make_jobs(root)
    with pytest.raises(grading.GradingSetupError, match="ghost"):
        grading.make_jobs(root, students=["ghost"])


def test_zip_collect_files_an_lms_download_under_each_student(tmp_path):
    import zipfile

    root = course.make_course(tmp_path / "course", notebooks=[NB])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    archive = root / "downloaded" / course.ASSIGNMENT / "archive"
    archive.mkdir(parents=True)
    release = root / "release" / course.ASSIGNMENT / NB
    with zipfile.ZipFile(archive / "alice.zip", "w") as z:
        z.write(release, NB)
    course.nbgrader(root, "zip_collect", course.ASSIGNMENT)
    collected = root / "submitted" / "alice" / course.ASSIGNMENT / NB
    assert collected.read_bytes() == release.read_bytes()
    assert [j.student for j in grading.make_jobs(root)] == ["alice"]


def test_bench_grade_grades_reference_copies_with_full_marks(tmp_path):
    from labkit.benchmarks import bench_grade

    rows = bench_grade(submissions=2, workers=(2,), notebooks=[NB], json_path=tmp_path / "b.json")
    assert [(r["workers"], r["submissions"], r["all_full_marks"]) for r in rows] == [(2, 2, True)]
    assert rows[0]["per_hour"] == pytest.approx(2 * 3600 / rows[0]["wall_s"], rel=0.01)
