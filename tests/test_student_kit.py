"""What students receive (`python -m labkit student-kit`): the release notebooks and labkit
without its grading room, nothing of the instructor's; it installs with its one command in
a fresh virtual environment and its notebooks run; `make handin` packs what to hand in."""
import os
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import REPO
from labkit import handin, paths
from labkit.grading import course, student_kit
from nbgrader_course import solution_lines

SOURCE, RELEASE = REPO / "source" / course.ASSIGNMENT, REPO / "release" / course.ASSIGNMENT
NOTEBOOKS = sorted(p.name for p in SOURCE.glob("*.ipynb"))


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    return student_kit.build(out=tmp_path_factory.mktemp("dist") / "kit.zip")


def _names(kit: Path) -> list[str]:
    with zipfile.ZipFile(kit) as zf:
        names = zf.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {f"{course.ASSIGNMENT}-student-{student_kit.version()}"}
    return [n.split("/", 1)[1] for n in names]


def test_the_kit_holds_what_a_student_needs(kit):
    names = _names(kit)
    assert {"README.md", "Makefile", "pyproject.toml", "environment.yml"} <= set(names)
    assert sorted(n for n in names if n.startswith("notebooks/")) == [f"notebooks/{nb}" for nb in NOTEBOOKS]
    with zipfile.ZipFile(kit) as zf:
        for nb in NOTEBOOKS:
            inside = zf.read(f"{course.ASSIGNMENT}-student-{student_kit.version()}/notebooks/{nb}")
            assert inside == (RELEASE / nb).read_bytes()
    # labkit as git tracks it, less the grading room: the lesson and the benchmark.
    tracked = subprocess.run(["git", "ls-files", "labkit"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    expected = sorted(p for p in tracked if not p.startswith("labkit/grading/"))
    assert sorted(n for n in names if n.startswith("labkit/")) == expected


def test_nothing_of_the_instructors_is_in_the_kit(kit):
    names = _names(kit)
    assert [n for n in names if re.match(r"(source|release|tests|\.git|\.ci|dist|docs)/|labkit/grading/", n)] == []
    assert [n for n in names if re.search(r"verdicts|referee|key|nbgrader_config|gradebook", n)] == []
    prefix = f"{course.ASSIGNMENT}-student-{student_kit.version()}/"
    with zipfile.ZipFile(kit) as zf:
        texts = {n: zf.read(prefix + n).decode() for n in names}
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "labkit.grading", "from .grading",
                   "referee-key"):
        # __main__ names the grading room to say that the kit has none; pyproject.toml its data.
        assert [n for n, text in texts.items() if marker in text
                and n not in ("labkit/__main__.py", "pyproject.toml")] == [], marker
    # No line of an answer in the notebooks or the kit's own files. (labkit's implementations
    # of the tasks are in the kit on purpose: docs/teaching-guide.md, "The student kit".)
    secrets = {line for nb in NOTEBOOKS for line in solution_lines(SOURCE / nb)}
    assert secrets
    leaked = {(n, line) for n, text in texts.items() if not n.startswith("labkit/") for line in secrets if line in text}
    assert leaked == set()


def test_the_same_tree_gives_the_same_kit(kit, tmp_path):
    assert student_kit.build(out=tmp_path / "again.zip").read_bytes() == kit.read_bytes()


def test_an_instructors_command_in_the_kit_says_what_it_is(kit, tmp_path):
    with zipfile.ZipFile(kit) as zf:
        zf.extractall(tmp_path)
    folder = next(tmp_path.iterdir())
    # -S: no .pth file runs, so the developer's editable labkit cannot stand in for the kit's.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), sysconfig.get_paths()["purelib"]]))
    for command in (["grade"], ["student-kit"], ["release"]):
        proc = subprocess.run([sys.executable, "-S", "-m", "labkit", *command], cwd=folder, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "instructor's command" in proc.stderr, proc.stderr
    assert not (folder / "labkit" / "grading").exists()


# ---------------------------------------------------------------- handing in

def _notebooks(folder: Path, solved: bool) -> Path:
    folder.mkdir(parents=True)
    for nb in NOTEBOOKS:
        if solved:
            course.write_submission(RELEASE / nb, SOURCE / nb, folder / nb)
        else:
            (folder / nb).write_bytes((RELEASE / nb).read_bytes())
    return folder


def test_handin_packs_the_five_notebooks_under_the_students_id(tmp_path, capsys):
    notebooks = _notebooks(tmp_path / "notebooks", solved=True)
    archive = handin.handin("2024001", notebooks, tmp_path / "handin")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == [f"2024001/{nb}" for nb in NOTEBOOKS]
        assert zf.read("2024001/04_chat.ipynb") == (notebooks / "04_chat.ipynb").read_bytes()
    assert "未完成" not in capsys.readouterr().out


def test_handin_names_unsolved_tasks_and_refuses_what_it_cannot_pack(tmp_path, capsys):
    notebooks = _notebooks(tmp_path / "notebooks", solved=False)
    handin.handin("2024002", notebooks, tmp_path / "handin")
    out = capsys.readouterr().out
    tasks = [c.metadata.nbgrader["grade_id"] for c in nbformat.read(RELEASE / "01_env.ipynb", as_version=4).cells
             if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
    assert len(tasks) == 3 and f"01_env.ipynb 还有未完成的任务 has tasks left: {', '.join(tasks)}" in out
    for bad in ("", "../x", "a b", "学号"):
        with pytest.raises(handin.HandinError, match="student id"):
            handin.handin(bad, notebooks, tmp_path / "handin")
    (notebooks / "03_quant.ipynb").write_text("{ not json")
    with pytest.raises(handin.HandinError, match="03_quant.ipynb .*cannot be read"):
        handin.handin("2024002", notebooks, tmp_path / "handin")
    (notebooks / "03_quant.ipynb").unlink()
    with pytest.raises(handin.HandinError, match="missing 03_quant.ipynb"):
        handin.handin("2024002", notebooks, tmp_path / "handin")
    assert sorted(p.name for p in (tmp_path / "handin").iterdir()) == ["2024002.zip"]  # the first one, kept


# ---------------------------------------------------------------- a fresh install

@pytest.mark.slow
def test_the_kit_installs_with_its_one_command_and_its_notebooks_run(kit, tmp_path):
    """Unpacked in a fresh folder, `make install` builds a fresh .venv (pip's cache makes it
    quick); the five notebooks, their solutions written in as a student would, run top to
    bottom in that environment's kernel as under `nbgrader autograde` (the demonstrations
    skipped), in order, each reading what the one before wrote."""
    with zipfile.ZipFile(kit) as zf:
        zf.extractall(tmp_path / "unpacked")
    folder = next((tmp_path / "unpacked").iterdir())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "LABKIT_"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    start = time.monotonic()
    install = subprocess.run(["make", "install"], cwd=folder, env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    print(f"make install from the kit: {time.monotonic() - start:.0f} s")
    python = folder / ".venv" / "bin" / "python"
    assert "labkit" in subprocess.run([str(python), "-c", "import labkit, sys; print(labkit.__file__)"],
                                      capture_output=True, text=True, check=True).stdout
    # The student's own graphs in a folder of their own; what labkit builds the same for
    # everyone (the converted model, the benchmark table) from the run's shared folder, as
    # grading does.
    run_env = dict(env, LABKIT_ARTIFACTS=str(tmp_path / "artifacts"), NBGRADER_EXECUTION="autograde",
                   LABKIT_SHARED_ARTIFACTS=os.environ[paths.ARTIFACTS_ENV])
    for nb in NOTEBOOKS:
        solved = course.write_submission(folder / "notebooks" / nb, SOURCE / nb, folder / "notebooks" / nb)
        start = time.monotonic()
        proc = subprocess.run([str(folder / ".venv" / "bin" / "jupyter"), "nbconvert", "--to", "notebook",
                               "--execute", "--inplace", "--ExecutePreprocessor.timeout=1200", str(solved)],
                              cwd=folder / "notebooks", env=run_env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{nb}: {proc.stderr[-3000:]}"
        ran = nbformat.read(solved, as_version=4)
        errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert errors == [], nb
        print(f"{nb}: {time.monotonic() - start:.0f} s")
