"""End to end through nbgrader's own API on a scratch course: generate, submit, autograde,
read the scores back from the gradebook. Runs the five notebooks on the bundled default model,
once per test run: the cases that differ in one notebook (a wrong answer, a regrade with the
same key, delegating to labkit) are graded on that notebook alone in test_grading_class.py
and the referee's tests."""
import pytest

from conftest import REPO
from labkit import course
from nbgrader_course import graded_points

pytestmark = pytest.mark.slow
SOURCE = REPO / "source" / course.ASSIGNMENT
NOTEBOOKS = sorted(p.name for p in SOURCE.glob("*.ipynb"))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = course.make_course(tmp_path_factory.mktemp("course"))
    api = course.grading_api(root)
    assert api.generate_assignment(course.ASSIGNMENT)["success"]
    release = root / "release" / course.ASSIGNMENT
    submissions = {
        "solver": dict(answers="solution"),
        "blank": dict(answers="blank"),
    }
    results = {}
    for student, how in submissions.items():
        for notebook in NOTEBOOKS:
            out = root / "submitted" / student / course.ASSIGNMENT / notebook
            course.write_submission(release / notebook, SOURCE / notebook, out, **how)
        results[student] = api.autograde(course.ASSIGNMENT, student)
    return root, results


def test_every_submission_grades_without_crashing(graded):
    _, results = graded
    assert {s: r["success"] for s, r in results.items()} == dict.fromkeys(results, True), results


def test_scores_in_the_gradebook(graded):
    root, _ = graded
    points = {nb: graded_points(SOURCE / nb) for nb in NOTEBOOKS}
    auto = sum(sum(p.values()) for p in points.values())
    total = auto + sum(sum(graded_points(SOURCE / nb, manual=True).values()) for nb in NOTEBOOKS)
    scores = course.submission_scores(root)
    assert total > auto  # the written answers wait for a person: autograde gives them nothing yet
    assert scores["solver"] == (auto, total)
    assert scores["blank"] == (0, total)
