"""`python -m labkit student-kit`: what students receive, as one zip.

dist/llm_lab-student-<version>.zip holds the release notebooks, labkit without its
grading room, the one list of dependencies (pyproject.toml), an environment file, a
Makefile whose `make install` sets everything up, and a student README. Nothing of the
instructor's: no source/, tests/, git history, verdicts, referee or key, no solution.

labkit's implementations of the tasks stay in the kit (docs/teaching-guide.md says why):
the later notebooks run on them, and the copy check compares every task with them.
"""
from __future__ import annotations

import io
import subprocess
import tomllib
import zipfile
from pathlib import Path

from .course import ASSIGNMENT, REPO

KIT_FILES = Path(__file__).with_name("kit_files")
# labkit's files a student needs: code and its data, by suffix.
SUFFIXES = {".py", ".json", ".cmake"}
LEFT_OUT = {"grading", "__pycache__"}
# A fixed time stamp: the same tree gives the same archive, byte for byte.
STAMP = (2026, 1, 1, 0, 0, 0)


def version(repo: Path = REPO) -> str:
    return tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]


def contents(repo: Path = REPO) -> dict[str, bytes]:
    """The kit's files, by their path inside the kit."""
    files = {"README.md": (KIT_FILES / "README.md").read_bytes(),
             "Makefile": (KIT_FILES / "Makefile").read_bytes(),
             "pyproject.toml": (repo / "pyproject.toml").read_bytes(),
             "environment.yml": (repo / "environment.yml").read_text().replace("-e .[test,grading]", "-e .").encode()}
    for notebook in sorted((repo / "release" / ASSIGNMENT).glob("*.ipynb")):
        files[f"notebooks/{notebook.name}"] = notebook.read_bytes()
    package = repo / "labkit"
    for path in _package_files(repo):
        relative = path.relative_to(package)
        if path.is_file() and not path.is_symlink() and path.suffix in SUFFIXES \
                and not LEFT_OUT & set(relative.parts[:-1]):
            files[f"labkit/{relative.as_posix()}"] = path.read_bytes()
    return files


def _package_files(repo: Path) -> list[Path]:
    """labkit's files as git tracks them (an untracked file in a developer's tree stays out),
    or every file when the course has no git history."""
    if (repo / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "labkit"], cwd=repo, capture_output=True, check=True).stdout
        return sorted(repo / name for name in listed.decode().split("\0") if name)
    return sorted((repo / "labkit").rglob("*"))


def build(repo: Path = REPO, out: Path | None = None) -> Path:
    """Write dist/llm_lab-student-<version>.zip (or `out`); every file under one folder of the
    same name, so unpacking it never scatters files."""
    name = f"{ASSIGNMENT}-student-{version(repo)}"
    out = out or repo / "dist" / f"{name}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in sorted(contents(repo).items()):
            info = zipfile.ZipInfo(f"{name}/{path}", STAMP)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    out.write_bytes(buffer.getvalue())
    return out
