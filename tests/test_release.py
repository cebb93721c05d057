"""release/ and notebooks/ are generated from source/ and must not drift from it."""
import re

import nbformat
import pytest

from conftest import REPO
from labkit.grading import course
from nbgrader_course import graded_points, solution_lines

SOURCE = REPO / "source" / course.ASSIGNMENT


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return course.build_release(tmp_path_factory.mktemp("course"))


@pytest.mark.parametrize("committed", [REPO / "release" / course.ASSIGNMENT, REPO / "notebooks"],
                         ids=["release", "notebooks"])
def test_committed_edition_matches_source(built, committed):
    assert course.differences(built, committed) == [], (
        f"{committed} is out of date with source/: run `make release` and commit the result")


def test_release_has_the_notebooks_in_order(built):
    names = sorted(p.name for p in SOURCE.glob("*.ipynb"))
    assert names and names == sorted(p.name for p in built.glob("*.ipynb"))
    assert names[0] == "01_env.ipynb"


def test_graded_cells_have_ids_unique_across_the_assignment():
    # Grade reports and the grading summary name a check by its id alone.
    ids = [i for nb in sorted(SOURCE.glob("*.ipynb")) for manual in (False, True) for i in graded_points(nb, manual)]
    assert ids and sorted(set(ids)) == sorted(ids)


# Tasks a line of code answers: together at most a tenth of the auto-graded points.
ONE_LINERS = {"test-weight-bytes", "test-count-tokens", "check-graph", "check-summary"}


def test_points_go_to_the_work():
    auto = {g: p for nb in SOURCE.glob("*.ipynb") for g, p in graded_points(nb).items()}
    written = {g: p for nb in SOURCE.glob("*.ipynb") for g, p in graded_points(nb, manual=True).items()}
    assert ONE_LINERS <= set(auto)
    assert sum(auto[g] for g in ONE_LINERS) <= 0.10 * sum(auto.values())
    share = sum(written.values()) / (sum(auto.values()) + sum(written.values()))
    assert 0.18 <= share <= 0.22, f"the written answers are {share:.0%} of the total"


def _after_questions(notebook, kind: str, flag: str):
    """(the cell, the markdown question above it, every markdown above it) for each cell of
    `kind` whose nbgrader metadata sets `flag`."""
    cells = nbformat.read(notebook, as_version=4).cells
    for i, cell in enumerate(cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == kind and meta.get(flag):
            above = [c for c in cells[:i] if c.cell_type == "markdown"]
            yield cell, above[-1], "".join(c.source for c in above)


@pytest.mark.parametrize("notebook", sorted(SOURCE.glob("*.ipynb")), ids=lambda p: p.name)
def test_each_written_answer_follows_its_question_and_rubric(notebook):
    for cell, question, above in _after_questions(notebook, "markdown", "grade"):
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        assert question.metadata["nbgrader"].get("locked"), grade_id
        assert "Rubric" in question.source and "graded by hand" in above, grade_id
        assert cell.metadata["nbgrader"].get("solution") and "### BEGIN SOLUTION" in cell.source, grade_id


@pytest.mark.parametrize("notebook", sorted(SOURCE.glob("*.ipynb")), ids=lambda p: p.name)
def test_no_solution_or_hidden_test_reaches_students(built, notebook):
    released = (built / notebook.name).read_text()
    secrets = solution_lines(notebook)
    assert secrets, "the source notebook should have solutions"
    leaked = [line for line in secrets if line in released]
    assert leaked == []
    assert "BEGIN SOLUTION" not in released and "BEGIN HIDDEN TESTS" not in released


def test_differences_catches_an_edit(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    nb = copy / "01_env.ipynb"
    nb.write_text(nb.read_text().replace("Environment check", "Environment chek"))
    assert course.differences(built, copy) == ["01_env.ipynb"]


def test_every_graded_cell_has_a_referee_verdict_and_every_verdict_a_cell():
    from labkit.grading import verdicts

    for notebook in sorted(SOURCE.glob("*.ipynb")):
        assert sorted(verdicts.NOTEBOOKS[notebook.stem].tasks) == sorted(graded_points(notebook)), notebook.name
    assert sorted(verdicts.NOTEBOOKS) == sorted(nb.stem for nb in SOURCE.glob("*.ipynb"))


# ---------------------------------------------------------------- 中文 first

CJK = re.compile(r"[\u4e00-\u9fff]")


def _paragraphs(markdown: str) -> list[str]:
    """The prose blocks of a markdown cell: no headings, tables or solution text."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", markdown)]
    return [b for b in blocks if b and not b.startswith(("#", "|"))]


def _language(block: str) -> str | None:
    if len(CJK.findall(block)) >= 5:
        return "zh"
    return "en" if len(re.findall(r"[A-Za-z]{2,}", block)) >= 5 else None


@pytest.mark.parametrize("notebook", sorted(SOURCE.glob("*.ipynb")), ids=lambda p: p.name)
def test_students_read_chinese_first_then_english(notebook):
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "markdown" or cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        languages = [lang for lang in map(_language, _paragraphs(cell.source)) if lang]
        if "en" in languages:
            assert "zh" in languages and languages.index("zh") < languages.index("en"), cell.source[:120]
    text = "".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown")
    assert len(CJK.findall(text)) > len(re.findall(r"[A-Za-z]+", text)) / 2  # measured: about 1 character per word


@pytest.mark.parametrize("notebook", sorted(SOURCE.glob("*.ipynb")), ids=lambda p: p.name)
def test_every_task_has_a_bilingual_contract_that_names_its_answers(notebook):
    from labkit.grading import verdicts

    for cell, question, _ in _after_questions(notebook, "code", "solution"):
        if "graded by hand" not in question.source:
            assert "**任务约定 Contract**" in question.source, cell.metadata["nbgrader"]["grade_id"]
    cells = nbformat.read(notebook, as_version=4).cells
    off_limits = " ".join(line for c in cells if c.cell_type == "markdown" for line in c.source.splitlines()
                          if "**不可调用 Off limits:**" in line)
    named = [q.rsplit(".", 1)[-1] for q in verdicts.NOTEBOOKS[notebook.stem].forbidden]
    missing = [name for name in named if not name.startswith("_") and f"{name}`" not in off_limits]
    assert missing == [], "labkit answers the task text does not name as off limits"


def test_later_notebooks_link_the_glossary():
    glossary = nbformat.read(SOURCE / "01_env.ipynb", as_version=4).cells
    assert any(c.source.startswith("## 中英术语表 Glossary") for c in glossary)
    for notebook in sorted(SOURCE.glob("0[2-5]_*.ipynb")):
        assert "(01_env.ipynb#中英术语表-Glossary)" in nbformat.read(notebook, as_version=4).cells[0].source
