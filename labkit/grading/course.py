"""The nbgrader course: regenerating the student edition from `source/`.

`source/<assignment>/` is the single source of truth. `build_release()` runs
`nbgrader generate_assignment` in a scratch course directory, so the
instructor's own gradebook is never touched; `publish()` copies the result to
`release/<assignment>/` and `notebooks/`, which must stay byte-identical to it
(tests/test_release.py fails on drift).

Also: scratch courses, nbgrader's API for a course, scores read back from its
gradebook, and submissions written from the source (the reference solution and
variants of it) for tests and `bench-grade`.
"""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ASSIGNMENT = "llm_lab"
SOLUTION = re.compile(r"^[ \t]*### BEGIN SOLUTION[ \t]*\n(.*?)^[ \t]*### END SOLUTION[ \t]*\n?",
                      re.S | re.M)
REPO = Path(__file__).resolve().parents[2]


def make_course(root: Path, repo: Path = REPO, notebooks: list[str] | None = None) -> Path:
    """A course directory at `root` with our config and source/, ready for nbgrader;
    `notebooks` keeps only those notebooks of the assignment."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "nbgrader_config.py", root / "nbgrader_config.py")
    shutil.copytree(repo / "source", root / "source", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    if notebooks is not None:
        for nb in (root / "source" / ASSIGNMENT).glob("*.ipynb"):
            if nb.name not in notebooks:
                nb.unlink()
    return root


def venv_bin_on_path() -> None:
    """nbgrader shells out to `alembic`, which sits next to this interpreter but is
    not on PATH when the venv is used without being activated."""
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run an nbgrader command in course directory `root`; raise with its log on failure."""
    venv_bin_on_path()
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def build_release(workdir: Path, repo: Path = REPO) -> Path:
    """Generate the assignment in a scratch course at `workdir`; return its release folder."""
    root = make_course(workdir, repo)
    nbgrader(root, "generate_assignment", ASSIGNMENT, "--force")
    return root / "release" / ASSIGNMENT


def differences(built: Path, committed: Path) -> list[str]:
    """Files that differ between two release folders (names relative to them)."""
    if not committed.is_dir():
        return [f"{committed} is missing"]
    cmp = filecmp.dircmp(built, committed, ignore=[".ipynb_checkpoints", "__pycache__"])
    found = []

    def walk(d, prefix=""):
        found.extend(prefix + n for n in d.left_only + d.right_only + d.diff_files)
        for name, sub in d.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(cmp)
    # dircmp compares by stat signature first; check the rest byte by byte.
    for path in built.rglob("*"):
        other = committed / path.relative_to(built)
        if path.is_file() and other.is_file() and path.read_bytes() != other.read_bytes():
            found.append(str(path.relative_to(built)))
    return sorted(set(found))


def publish(repo: Path = REPO) -> list[Path]:
    """Regenerate release/ and notebooks/ from source/. Returns the notebooks written."""
    with tempfile.TemporaryDirectory(prefix="labkit-release-") as tmp:
        built = build_release(Path(tmp), repo)
        for target in (repo / "release" / ASSIGNMENT, repo / "notebooks"):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(built, target)
    return sorted((repo / "notebooks").glob("*.ipynb"))


def grading_api(root: Path):
    """nbgrader's Python API for the course at `root`, configured by its nbgrader_config.py."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    venv_bin_on_path()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    config.CourseDirectory.root = str(root)
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def submission_scores(root: Path, assignment: str = ASSIGNMENT) -> dict[str, tuple[float, float]]:
    """(score, max score) of each graded submission, read back from the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{Path(root) / 'gradebook.db'}") as gb:
        return {s.student_id: (s.score, s.max_score) for s in gb.assignment_submissions(assignment)}


# Submissions written from the source: the reference solution (benchmarks, tests) and
# variants of it.

def solution_code(source_cell_text: str) -> str:
    """The text of a source solution cell as a student who solved it would hand it in."""
    return SOLUTION.sub(lambda m: m.group(1), source_cell_text)


def write_submission(release_nb: Path, source_nb: Path, out: Path, answers: str = "solution",
                     overrides: dict[str, str] | None = None) -> Path:
    """answers="solution" fills every solution cell from source; "blank" leaves the stubs.
    `overrides` maps a grade_id to the code a student wrote instead."""
    release = nbformat.read(release_nb, as_version=4)
    source = {c.get("id"): c for c in nbformat.read(source_nb, as_version=4).cells}
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        if overrides and meta["grade_id"] in overrides:
            cell.source = overrides[meta["grade_id"]]
        elif answers == "solution":
            cell.source = solution_code(source[cell.id].source)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(release, out)
    return out
