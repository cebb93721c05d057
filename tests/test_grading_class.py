"""`labkit grade` on a class of awkward submissions: each case is a submission of notebook 01
built for it, graded in parallel on a Dask LocalCluster of two worker processes, merged into
the course gradebook and checked against the score it should get."""
import html
import re
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from labkit.grading import child, classroom, course, trust
from conftest import REPO
from nbgrader_course import edit_cell, graded_points, solution_lines

pytestmark = pytest.mark.slow
NB = "01_env.ipynb"
POINTS = graded_points(REPO / "source" / course.ASSIGNMENT / NB)
FULL = sum(POINTS.values())


def without(*grade_ids: str) -> float:
    """Full marks less the points of these graded cells."""
    return FULL - sum(POINTS[g] for g in grade_ids)

# Tight limits keep the looping case short. At cell_s=30, on a slow day (2026-12-02: the whole
# suite 37.5 min against 27-31), the memory hog's allocations and a model check each outran
# their cell once; both pass in a few seconds otherwise.
LIMITS = classroom.Limits(submission_s=600, cell_s=45, memory_gb=6)

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


def writes_artifacts(me: str) -> str:
    """A submission that writes its name to the same file of its artifacts folder as another
    one graded at the same moment, waits, and must read back its own; it also lists what it
    can see of the other submissions' scratch courses (nothing)."""
    return f"""\
import glob, os, tempfile, time
from labkit import paths

started = time.time()
(paths.artifacts_dir() / "mine.txt").write_text("{me}")
time.sleep(8)
assert (paths.artifacts_dir() / "mine.txt").read_text() == "{me}", "another submission overwrote my file"
others = [p for p in glob.glob(os.path.join(tempfile.gettempdir(), "labkit-grade-*")) if not os.getcwd().startswith(p)]
print("WINDOW", started, time.time(), "OTHERS", others)
""" + OTHER_WEIGHT_BYTES


ANSWER_HUNT = """\
import glob, os, tempfile
import labkit
places = {tempfile.gettempdir(), os.path.abspath("../../.."), os.path.dirname(os.path.dirname(labkit.__file__))}
places.discard("/")  # not the whole disk: that hunt would outlast the cell's time limit
found = []
for place in places:
    for pattern in ("source/**/*.ipynb", "**/gradebook.db", "**/submitted/**/*.ipynb", "**/.labkit-referee-key"):
        found += glob.glob(os.path.join(place, pattern), recursive=True)
for path in found:
    try:
        print(path, open(path, errors="replace").read()[:20000])
    except OSError as exc:
        print(path, exc)
print("FOUND", len(found))
"""
DELEGATE_PARAM_COUNT = {
    "direct": "import labkit\nqwen3_param_count = labkit.param_count\n",
    "source": "import sys, types\nimport labkit.models\ncopy = sys.modules['labkit.copy'] = types.ModuleType('labkit.copy')\n"
              "copy.__package__ = 'labkit'\nexec(open(labkit.models.__file__).read(), copy.__dict__)\n"
              "qwen3_param_count = copy.param_count\n",
}
TAMPER_CHECKS = """\
import labkit.checks
for name in dir(labkit.checks):
    if callable(getattr(labkit.checks, name)) and not name.startswith("_"):
        setattr(labkit.checks, name, lambda *args, **kwargs: None)
"""
HIDE_ERRORS = """\
import sys
from IPython import get_ipython

get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)
sys.excepthook = lambda *args: None
"""
WEIGHT_BYTES_MESSAGE = "fp16 stores each weight in 2 bytes"


def escape_attempts(course_root) -> dict:
    """The sandbox's escapes, from a student who knows where the course lives: links named like
    the next notebooks to the gradebook and the key (nbgrader wrote through them as root),
    a link to the course where the kernel's home used to be kept, a FIFO, a double-forked
    process, and a look for the course in the environment. Run by the kernel and again by the
    referee's child; the answers themselves are right."""
    return {"count-tokens": f"""\
import os, time
course = {str(course_root)!r}
for name, target in (("03_quant.ipynb", "gradebook.db"), ("04_chat.ipynb", ".labkit-referee-key")):
    os.symlink(os.path.join(course, target), name)
os.symlink(course, os.path.join(os.environ.get("LABKIT_ARTIFACTS", "."), ".home"))
os.mkfifo("05_kvcache.ipynb")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(600)
    os._exit(0)
print("SEEN", sorted(k for k, v in os.environ.items() if course in v), os.path.exists(course))
""" + OTHER_COUNT_TOKENS}

# student: (answers written into the solution cells, edits to the notebook, score,
#           problems and integrity notes: substrings of the summary's; none expected when empty)
CASES = {
    "solver": ({}, [], FULL, [], []),
    "blank": ("blank", [], 0, ["test-weight-bytes: AssertionError"], []),
    # Written unlike the reference, one of them printing warnings to stderr: full marks.
    "different": ({"weight-bytes": OTHER_WEIGHT_BYTES, "param-count": OTHER_PARAM_COUNT,
                   "count-tokens": NOISY_COUNT_TOKENS}, [], FULL, [], []),
    # The test cells edited: a wrong answer's test made to pass, another test deleted, a third
    # turned into markdown. All three come back from the gradebook; only the wrong answer
    # costs points, with a message in Chinese first, then English.
    "edits_tests": ({"weight-bytes": WRONG_WEIGHT_BYTES},
                    [("test-weight-bytes", dict(source="assert True")), ("test-param-count", dict(delete=True)),
                     ("test-count-tokens", dict(cell_type="markdown"))], without("test-weight-bytes"),
                    ["test-weight-bytes: AssertionError", "fp16 每个权重占 2 字节", WEIGHT_BYTES_MESSAGE], []),
    "renamed": ({}, [("rename", {})], 0, ["01_env: not submitted (handed in: 01_env-Copy1.ipynb)"], []),
    # One cell raises, another runs out of memory: each costs its own task only.
    "raises": ({"weight-bytes": 'raise RuntimeError("I broke it")',
                "count-tokens": "import numpy as np\nhog = [np.ones(2**25) for _ in range(10**6)]\n" + OTHER_COUNT_TOKENS},
               [], without("test-weight-bytes", "test-count-tokens"),
               ["weight-bytes: RuntimeError: I broke it", "name 'weight_bytes' is not defined",
                "count-tokens: MemoryError", "raised NameError"], []),
    "loops": ({"param-count": "while True:\n    pass\n" + OTHER_PARAM_COUNT}, [], without("test-param-count"),
              ["param-count: CellTimeoutError",
               f"TimeoutError: stopped after {child.TIMED_OUT_CELL_S:.0f} s (it had already run past the "
               f"{LIMITS.cell_s} s limit"], []),
    # Changing the referee: the kernel's checks made no-ops and its errors hidden. The score is
    # the referee's, and the attempt is flagged. (The referee's child has no IPython: the
    # hiding raises there, after the wrong answer is defined.) And reading the answers:
    # nothing of the course is there to read; that attempt is flagged too, and costs nothing.
    "tampers": ({"weight-bytes": TAMPER_CHECKS + WRONG_WEIGHT_BYTES + HIDE_ERRORS,
                 "count-tokens": ANSWER_HUNT + OTHER_COUNT_TOKENS}, [], without("test-weight-bytes"),
                ["test-weight-bytes: AssertionError", WEIGHT_BYTES_MESSAGE],
                ["01_env: cell 1: changing the checks", "01_env: cell 3: reaching for the instructor's files"]),
    # Calling the reference: qwen3_param_count is labkit.param_count's job. By name, and by
    # its source executed as a new module; an alias, getattr and a reload reach notebooks
    # 02-05's answers in test_referee.py, through the same stubs.
    **{f"delegate_{how}": ({"param-count": code}, [], without("test-param-count"), ["test-param-count: AssertionError"],
                           ["01_env: called labkit.models.param_count"])
       for how, code in DELEGATE_PARAM_COUNT.items()},
    # Reaching out of the sandbox (issue 39): the work is right, so full marks; nothing
    # reached, nothing left (test_an_escape_reaches_nothing_and_leaves_nothing).
    "escapes": (escape_attempts, [], FULL, [], ["01_env: cell 3: reaching for the instructor's files"]),
}


def _submit(root, student, answers, edits):
    release, source = root / "release" / course.ASSIGNMENT, root / "source" / course.ASSIGNMENT
    folder = root / "submitted" / student / course.ASSIGNMENT
    answers = answers(root) if callable(answers) else answers
    how = dict(answers="blank") if answers == "blank" else dict(overrides=answers)
    out = course.write_submission(release / NB, source / NB, folder / NB, **how)
    for grade_id, how in edits:
        if grade_id == "rename":
            out.rename(folder / "01_env-Copy1.ipynb")
        else:
            edit_cell(out, grade_id, **how)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = course.make_course(tmp_path_factory.mktemp("class"), notebooks=[NB])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    for student, (answers, edits, *_) in CASES.items():
        _submit(root, student, answers, edits)
    table = classroom.grade_class(root, workers=2, limits=LIMITS, progress=False)
    return root, table.set_index("student")


@pytest.mark.parametrize("student", CASES)
def test_each_submission_gets_the_score_it_earned(graded, student):
    root, table = graded
    *_, score, problems, flags = CASES[student]
    assert course.submission_scores(root)[student] == (score, FULL)
    assert table.loc[student, "score"] == score
    found = table.loc[student, "problems"]
    assert [p for p in problems if p not in found] == [], found
    if not problems:
        assert found == ""
    # The copy check's notes are the class's, not the case's: test_the_copy_check_ran_over_the_class.
    noted = "; ".join(n for n in table.loc[student, "integrity"].split("; ") if not n.startswith("similar to "))
    assert [f for f in flags if f not in noted] == [], noted
    if not flags:
        assert noted == ""


def test_an_escape_reaches_nothing_and_leaves_nothing(graded):
    """The escaping submission saw neither the course nor its path; the course is still
    root's, file by file; the graded folder holds only the notebook nbgrader wrote; no process
    of any submission is left (the double-forked ones died with their kernels)."""
    import os

    import psutil

    from labkit.grading import sandbox

    root, _ = graded
    nb = nbformat.read(root / "autograded" / "escapes" / course.ASSIGNMENT / NB, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "SEEN [] False" in printed, printed[-2000:]
    assert [p for p in root.rglob("*") if p.lstat().st_uid >= sandbox.UID_BASE] == []
    key = root / trust.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 64
    graded_folder = root / "autograded" / "escapes" / course.ASSIGNMENT
    assert NB in {p.name for p in graded_folder.iterdir()}
    assert [p.name for p in graded_folder.iterdir() if not p.is_file() or p.is_symlink() or "kvcache" in p.name
            or "quant" in p.name or "chat" in p.name] == []
    assert [p.pid for p in psutil.process_iter(["uids"])
            if p.info["uids"] and p.info["uids"].real >= sandbox.UID_BASE] == []
    assert os.path.isfile(root / "gradebook.db") and not (root / "gradebook.db").is_symlink()


def test_a_hunt_for_the_answers_finds_nothing_to_print(graded):
    root, _ = graded
    nb = nbformat.read(root / "autograded" / "tampers" / course.ASSIGNMENT / NB, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "FOUND 0" in printed
    secret = solution_lines(root / "source" / course.ASSIGNMENT / NB)
    assert secret and [line for line in secret if line in printed] == []


def test_the_summary_counts_the_flagged_submissions(graded):
    _, table = graded
    copies = {s for s, notes in table["integrity"].items() if "similar to " in notes}
    assert sorted(classroom.flagged(table.reset_index())) == sorted({s for s, case in CASES.items() if case[-1]} | copies)


def test_the_copy_check_ran_over_the_class(graded):
    """Most cases hand in the reference's param-count cell: copies of one another, and noted
    so. The different-but-correct submission's cell is its own."""
    root, table = graded
    note = next(n for n in table.loc["solver", "integrity"].split("; ") if "in 01_env/param-count" in n)
    assert note.startswith("similar to student edits_tests, ") and note.endswith("in 01_env/param-count (100%): "
                                                                                  "see similarity.html")
    assert "student solver" not in table.loc["different", "integrity"]
    assert "solver · tampers" in (root / "similarity.html").read_text()


def test_submissions_graded_at_once_keep_their_own_files(tmp_path):
    root = course.make_course(tmp_path, notebooks=[NB])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    _submit(root, "writer_a", {"weight-bytes": writes_artifacts("writer_a")}, [])
    _submit(root, "writer_b", {"weight-bytes": writes_artifacts("writer_b")}, [])
    table = classroom.grade_class(root, workers=2, limits=LIMITS, progress=False)
    assert table["problems"].tolist() == ["", ""]
    assert course.submission_scores(root) == {"writer_a": (FULL, FULL), "writer_b": (FULL, FULL)}
    windows = []
    for student in ("writer_a", "writer_b"):
        nb = nbformat.read(root / "autograded" / student / course.ASSIGNMENT / NB, as_version=4)
        line = next(o["text"] for c in nb.cells for o in c.get("outputs", []) if "WINDOW" in o.get("text", ""))
        _, start, end, _, others = line.split(maxsplit=4)
        windows.append((float(start), float(end)))
        assert others.strip() == "[]"  # no other submission's scratch course in sight
    (a_start, a_end), (b_start, b_end) = windows
    assert a_start < b_end and b_start < a_end, "the two were not graded at the same time"


def test_the_summary_is_written_as_csv(graded):
    import pandas as pd

    root, table = graded
    saved = pd.read_csv(root / "grading_summary.csv", keep_default_na=False).set_index("student")
    assert sorted(saved.index) == sorted(CASES)
    assert (saved["score"] == table["score"]).all()
    assert (saved["integrity"] == table["integrity"]).all()
    assert set(saved["status"]) == {"graded", "failed"}  # only the renamed notebook fails nbgrader
    assert saved.loc["renamed", "status"] == "failed"


def test_merged_grades_equal_nbgrader_run_in_the_course(graded):
    """The reference: nbgrader's own autograde of the same submission in the course itself."""
    root, _ = graded

    def grades():
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
            nb = gb.find_submission_notebook("01_env", course.ASSIGNMENT, "edits_tests")
            return {g.name: (g.auto_score, g.needs_manual_grade) for g in nb.grades}

    merged = grades()
    result = course.grading_api(root).autograde(course.ASSIGNMENT, "edits_tests", force=True)
    assert result["success"], result["log"]
    assert grades() == merged


def test_a_regrade_stops_a_submission_over_its_time_limit_and_scores_the_others_again(graded):
    """After the class: the looping submission, over a 60 s limit for the whole submission, is
    stopped and the batch goes on; the solver, graded again, keeps full marks."""
    root, table = graded
    started = time.time()
    slow = classroom.Limits(submission_s=60, cell_s=600, memory_gb=6)
    again = classroom.grade_class(root, students=["loops", "solver"], workers=2, limits=slow,
                                progress=False, csv=root / "slow.csv").set_index("student")
    assert again.loc["loops", "status"] == "timed out"
    assert "stopped at the 60 s limit" in again.loc["loops", "problems"]
    assert course.submission_scores(root)["loops"] == (0, FULL)
    assert again.loc["solver", "score"] == table.loc["solver", "score"] == FULL
    assert course.submission_scores(root)["solver"] == (FULL, FULL)
    assert _processes_in("labkit-grade-loops-") == []  # the looping kernel did not outlive its limit
    left = [p for pattern in ("lk-*", "labkit-referee-*", "labkit-stripped-*", "labkit-home-*", "labkit-work-*")
            for p in Path(tempfile.gettempdir()).glob(pattern) if p.stat().st_mtime >= started]
    assert left == []  # nor the folders of its kernel and of the referee's child


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


def test_feedback_shows_the_referees_message_and_no_solution(graded):
    root, _ = graded
    api = course.grading_api(root)
    assert api.generate_feedback(course.ASSIGNMENT, "blank")["success"]
    page = (root / "feedback" / "blank" / course.ASSIGNMENT / "01_env.html").read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    secret = solution_lines(root / "source" / course.ASSIGNMENT / NB)
    assert secret and [line for line in secret if " ".join(line.split()) in text] == []
    assert "AssertionError: weight_bytes(" in text and "raised NotImplementedError" in text


def test_a_course_that_is_not_ready_gets_a_clear_error(tmp_path, capsys):
    from labkit.__main__ import main

    root = course.make_course(tmp_path / "course", notebooks=[NB])
    with pytest.raises(classroom.GradingSetupError, match="nbgrader generate_assignment llm_lab"):
        classroom.make_jobs(root)
    assert main(["grade", "--course", str(root)]) == 1
    assert "run `nbgrader generate_assignment llm_lab` there first" in capsys.readouterr().err
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    with pytest.raises(classroom.GradingSetupError, match="nothing to grade"):
        classroom.make_jobs(root)
    with pytest.raises(classroom.GradingSetupError, match="ghost"):
        classroom.make_jobs(root, students=["ghost"])


def test_shared_artifacts_the_kernels_cannot_read_are_refused_before_grading(tmp_path, monkeypatch):
    from labkit import paths
    from labkit.grading import sandbox

    root = course.make_course(tmp_path / "course", notebooks=[NB])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    _submit(root, "alice", {}, [])
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)
    monkeypatch.setenv(paths.SHARED_ENV, str(private))
    monkeypatch.setattr(sandbox, "isolation", lambda: "sandbox")
    with pytest.raises(classroom.GradingSetupError, match=f"chmod o\\+rx {private}"):
        classroom.make_jobs(root)
    private.chmod(0o755)
    assert [j.student for j in classroom.make_jobs(root)] == ["alice"]


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
    assert [j.student for j in classroom.make_jobs(root)] == ["alice"]


def test_bench_grade_grades_reference_copies_with_full_marks(tmp_path):
    rows = classroom.bench_grade(submissions=2, workers=(2,), notebooks=[NB], json_path=tmp_path / "b.json")
    assert [(r["workers"], r["submissions"], r["all_full_marks"]) for r in rows] == [(2, 2, True)]
    assert rows[0]["per_hour"] == pytest.approx(2 * 3600 / rows[0]["wall_s"], rel=0.01)
