"""The README's instructor steps, run as written in a fresh copy of the repository: the
commands are read from its bash block, not repeated here, so a step that stops working in
the README fails this test. The course is cut to notebook 04 (a loop task and written
answers) to stay small; two students hand it in, one through nbgrader's exchange as on a
JupyterHub, one as a `make handin` zip for `zip_collect`."""
import csv
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from labkit.grading import course, student_kit

pytestmark = pytest.mark.slow
NB = "04_chat.ipynb"


def readme_steps() -> list[str]:
    """The commands of the instructors' bash block, comments and blank lines left out."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"### 教师\n.*?```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def test_the_readme_shows_one_command_per_step():
    steps = readme_steps()
    assert steps[0] == "make install && source .venv/bin/activate"
    assert "nbgrader generate_assignment llm_lab --force" in steps and "python -m labkit grade" in steps
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def _fresh_copy(target: Path) -> Path:
    """The repository's files as git sees them (tracked and new, not ignored), times kept, so
    that `make install` finds the venv up to date; the venv is the developer's."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(REPO / ".venv")
    for nb in (target / "source" / course.ASSIGNMENT).glob("*.ipynb"):
        if nb.name != NB:
            nb.unlink()
    return target


def _student_fetches_and_submits(exchange_env: dict, home: Path, solved_from: Path) -> None:
    """What a student does on the hub's Assignments tab, through nbgrader's own commands. On a
    hub the notebook server runs as `jovyan` and nbgrader takes the name from JUPYTERHUB_USER."""
    home.mkdir()
    as_alice = ("import sys, nbgrader.utils as u; u.get_osusername = lambda: 'jovyan'; "
                "from nbgrader.apps.nbgraderapp import main; sys.argv[0] = 'nbgrader'; main()")
    env = dict(exchange_env, JUPYTERHUB_USER="alice")
    subprocess.run([sys.executable, "-c", as_alice, "fetch_assignment", course.ASSIGNMENT, "--course", "llm-deploy"],
                   cwd=home, env=env, check=True, capture_output=True)
    fetched = home / course.ASSIGNMENT / NB
    course.write_submission(fetched, solved_from, fetched)
    subprocess.run([sys.executable, "-c", as_alice, "submit", course.ASSIGNMENT, "--course", "llm-deploy"],
                   cwd=home, env=env, check=True, capture_output=True)


def test_a_class_graded_from_the_readme_alone(tmp_path):
    root = _fresh_copy(tmp_path / "course")
    assert subprocess.run(["make", "-q", "install"], cwd=root).returncode == 0, \
        "the venv is out of date: run `make install` first (this test must not reinstall it from a copy)"
    # The hub's /etc/jupyter/nbgrader_config.py (teaching guide, section 3), here in a folder of the test's.
    config = tmp_path / "jupyter"
    config.mkdir()
    (config / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.course_id = 'llm-deploy'\nc.Exchange.root = {str(tmp_path / 'exchange')!r}\n")
    (tmp_path / "exchange").mkdir()
    (tmp_path / "exchange").chmod(0o777)
    # No venv on PATH: step 0 must put it there.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env["JUPYTER_CONFIG_DIR"] = str(config)

    def run(command: str) -> None:
        """One step in bash; the environment it leaves (step 0 activates the venv) goes on."""
        nonlocal env
        saved = tmp_path / "env"
        proc = subprocess.run(["bash", "-c", f"{command} && env -0 > {saved}"], cwd=root, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        env = dict(item.split("=", 1) for item in saved.read_text().split("\0") if "=" in item)

    source_nb = REPO / "source" / course.ASSIGNMENT / NB
    for step in readme_steps():
        if step == "nbgrader collect llm_lab":
            _student_fetches_and_submits(dict(os.environ, JUPYTER_CONFIG_DIR=str(config)), tmp_path / "alice",
                                         source_nb)
        if step == "nbgrader zip_collect llm_lab":  # bob's `make handin ID=bob`, downloaded from the course site
            archive = root / "downloaded" / course.ASSIGNMENT / "archive"
            archive.mkdir(parents=True)
            solved = course.write_submission(root / "release" / course.ASSIGNMENT / NB, source_nb, tmp_path / NB)
            with zipfile.ZipFile(archive / "bob.zip", "w") as zf:
                zf.write(solved, f"bob/{NB}")
        run(step)
        if step == "python -m labkit grade":  # step 6: a written answer graded by hand, via nbgrader's API
            api = course.grading_api(root)
            with api.gradebook as gb:
                submission = gb.find_submission_notebook(NB.removesuffix(".ipynb"), course.ASSIGNMENT, "alice")
                manual = [g for g in submission.grades if g.cell.cell_type == "markdown"]
                assert manual
                manual[0].manual_score = manual[0].max_score
                gb.db.commit()
                given = manual[0].max_score

    assert sorted(p.name for p in (root / "dist").iterdir()) == [f"llm_lab-student-{student_kit.version()}.zip"]
    assert sorted(p.name for p in (root / "submitted").iterdir()) == ["alice", "bob"]
    summary = list(csv.DictReader((root / "grading_summary.csv").open()))
    assert [(r["student"], r["auto_score"] == r["auto_max"], r["status"]) for r in summary] == \
        [("alice", True, "graded"), ("bob", True, "graded")]
    assert "similar to student bob" in summary[0]["integrity"]  # the same reference, handed in twice
    for student in ("alice", "bob"):
        assert (root / "feedback" / student / course.ASSIGNMENT / NB.replace(".ipynb", ".html")).is_file()
    # Released to alice, who submitted through the exchange; bob's zip has no submission secret
    # to fetch it with, so his HTML stays in feedback/bob/ for the instructor to send.
    assert len(list((tmp_path / "exchange" / "llm-deploy" / "feedback").glob("*.html"))) == 1
    grades = {r["student_id"]: r for r in csv.DictReader((root / "grades.csv").open())}
    assert float(grades["alice"]["score"]) == float(summary[0]["auto_score"]) + given
    assert float(grades["bob"]["score"]) == float(summary[1]["auto_score"])
