"""The lab end to end on the bundled default model, once per test run: `make lab`, then the
five notebooks on a scratch course (nbgrader's API generates the assignment; `labkit grade`
runs `nbgrader autograde` on each submission, both at once, and merges the scores into the
course gradebook, where they are read back). One file, in this order: grading notebook 05
reuses the benchmark the lab measured (and every graph it built). The cases that differ in
one notebook (a wrong answer, a regrade with the same key, delegating to labkit, nbgrader's
own autograde in the course giving the same grades) are graded on that notebook alone in
test_grading_class.py and the referee's tests."""
import json

import pytest

from conftest import REPO
from labkit import artifacts
from labkit.grading import classroom, course, trust
from labkit.__main__ import main
from nbgrader_course import graded_points

pytestmark = pytest.mark.slow
SOURCE = REPO / "source" / course.ASSIGNMENT
NOTEBOOKS = sorted(p.name for p in SOURCE.glob("*.ipynb"))


def test_lab_writes_its_report(tmp_path, capsys):
    """The whole lab on the default model, reusing the run's graphs. The benchmark is
    notebook 05's (one prompt length, no peers: those have tests of their own), so grading
    notebook 05 later reuses the table measured here."""
    assert main(["lab", "--out", str(tmp_path), "--lengths", "256", "--no-peers"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Paris" in report and "greedy 32 tokens identical on 3/3" in report
    chats = report.split("## 04 Chat")[1].split("## 05")[0]
    assert "Paris" in chats.split("### INT8, KV cache")[1]  # under the chat's system turn (issue 17)
    default = chats.split("### The chat's default graph")[1]  # chat_graph.py's rule, measured here
    assert "the fastest" in default and "Paris" in default and ("7 days" in default or "seven" in default)
    quant = report.split("## 03 INT8 static quantization")[1].split("## 04")[0]
    assert "| FP32 | 542." in quant and "(100.0%)" in quant and "| INT8 | 1" in quant
    bench = report.split("## 05")[1]
    assert "| engine | size | 256 |" in bench and "| ORT INT8, KV cache | 1" in bench
    assert "| ORT fused INT8, KV cache | 1" in bench
    assert json.loads((tmp_path / "env.json").read_text())["cores"] >= 1
    assert str(tmp_path / "report.md") in capsys.readouterr().out


def _reference_from_this_runs_graphs(loaded) -> None:
    """The referee's fp32 and int8 of the bundled model are labkit's own builds, and this run
    has built exactly those in its shared folder (graded kernels write folders of their own),
    so the referee starts from copies instead of exporting (38 s) and quantizing (31 s) the
    same graphs again, VNNI. test_paths covers the referee building its own."""
    for variant in ("fp32", "int8"):
        ours = artifacts.ensure(loaded, variant, log=lambda _: None)
        with trust.trusted_artifacts():
            if not artifacts.is_valid(loaded, variant):
                artifacts.copy_graph(ours, artifacts.path(loaded, variant))
            assert artifacts.is_valid(loaded, variant)


@pytest.fixture(scope="module")
def graded(tmp_path_factory, default_model):
    """The solution and a blank submission, graded at the same time: the blank one takes
    2 min 15 s alone and mostly waits on start-ups, while the solution (5-7 min) keeps about
    1.3 of the 2 cores busy. Two threads each, as one submission graded alone gets."""
    _reference_from_this_runs_graphs(default_model)
    root = course.make_course(tmp_path_factory.mktemp("course"))
    api = course.grading_api(root)
    assert api.generate_assignment(course.ASSIGNMENT)["success"]
    release = root / "release" / course.ASSIGNMENT
    for student, answers in (("solver", "solution"), ("blank", "blank")):
        for notebook in NOTEBOOKS:
            out = root / "submitted" / student / course.ASSIGNMENT / notebook
            course.write_submission(release / notebook, SOURCE / notebook, out, answers=answers)
    table = classroom.grade_class(root, workers=2, limits=classroom.Limits(threads=2), progress=False)
    return root, table.set_index("student")


def test_every_submission_grades_without_crashing(graded):
    _, table = graded
    assert table["status"].to_dict() == {"blank": "graded", "solver": "graded"}, table.T
    assert table.loc["solver", "problems"] == "" and table.loc["blank", "problems"], table.T
    assert table.loc["blank", "integrity"] == ""
    # The course's own reference for notebook 05's wrapper is labkit's KVWrapper line for line,
    # and the copy check says so (tests/test_similarity.py); nothing else is noted.
    notes = table.loc["solver", "integrity"].split("; ")
    assert notes and [n for n in notes if not (n.startswith("similar to labkit (")
                                               and " in 05_kvcache/kv-wrapper (" in n)] == [], notes


def test_scores_in_the_gradebook(graded):
    root, _ = graded
    points = {nb: graded_points(SOURCE / nb) for nb in NOTEBOOKS}
    auto = sum(sum(p.values()) for p in points.values())
    total = auto + sum(sum(graded_points(SOURCE / nb, manual=True).values()) for nb in NOTEBOOKS)
    scores = course.submission_scores(root)
    assert total > auto  # the written answers wait for a person: autograde gives them nothing yet
    assert scores["solver"] == (auto, total)
    assert scores["blank"] == (0, total)


def test_the_referee_applies_the_labs_recipe_by_copying_its_own_int8(graded, default_model):
    """The solution's recipe is the lab's, which the referee had already applied to the same
    float graph for notebook 04: its graph for the recipe is a copy of that int8 (copied with
    its times kept), not another build."""
    from labkit import quantize
    from labkit.onnx_graph import load_graph

    with trust.trusted_artifacts():
        lab = artifacts.path(default_model, "int8")
    lab_recipe = quantize.recipe_of(load_graph(lab))
    built = [p for p in (trust.private_dir() / "recipes").glob(f"*/{lab.name}")
             if quantize.recipe_of(load_graph(p)) == lab_recipe]
    assert len(built) == 1
    for name in (lab.name, lab.name + ".data"):
        mine, theirs = built[0].with_name(name).stat(), lab.with_name(name).stat()
        assert (mine.st_size, mine.st_mtime_ns) == (theirs.st_size, theirs.st_mtime_ns)
