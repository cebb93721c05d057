"""nbgrader plug-ins the course's nbgrader_config.py switches on.

Autograde, in order:
- `RestoreCells` (sanitizing): nbgrader's OverwriteCells, a restored deleted cell given an id.
- `PrepareShared`: builds what the notebook reads from the shared artifacts (the kernel cannot).
- `TimedExecute`: nbgrader's Execute, noting which cells it stopped at the time limit.
- `SandboxedKernelManager` (Execute's kernel manager): the student's kernel in `labkit.grading.sandbox`.
- `StderrIsNotAFailure`: nbgrader zeroes a graded cell that wrote anything to stderr; a library
  warning or a debugging print is not a failed check. Only a raised error costs points.
- `Referee`: each graded cell's score from `labkit.grading.referee`'s verdict, computed outside the
  kernel, replacing what the kernel's own checks showed.

Feedback: `HideHiddenTests` removes hidden regions (the lab has none left; an instructor's own
may) and shortens failed checks' tracebacks to their message. `ReleaseFeedback` releases it to
the students who submitted through the exchange and names the others.
"""
from __future__ import annotations

import glob
import os
import shutil
import stat
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbgrader.exchange.default.release_feedback import ExchangeReleaseFeedback
from nbgrader.preprocessors import ClearHiddenTests, Execute, NbGraderPreprocessor, OverwriteCells
from nbgrader.utils import is_grade, is_solution
from traitlets import Integer

from .. import paths
from . import sandbox, trust


def _is_check(cell) -> bool:
    return cell.cell_type == "code" and is_grade(cell) and not is_solution(cell)


class StderrIsNotAFailure(NbGraderPreprocessor):
    """Graded cells: stderr output becomes stdout, so only a raised error costs points."""

    def preprocess_cell(self, cell, resources, index):
        if _is_check(cell):
            for output in cell.get("outputs", []):
                if output.output_type == "stream" and output.name == "stderr":
                    output.name = "stdout"
        return cell, resources


class RestoreCells(OverwriteCells):
    """nbgrader's OverwriteCells: a graded cell the student deleted comes back from the
    gradebook, here with a cell id (nbgrader's has none, which nbformat warns will become an
    error)."""

    def missing_cell_transform(self, source_cell, max_score, is_solution=False, is_task=False):
        cell = super().missing_cell_transform(source_cell, max_score, is_solution, is_task)
        cell["id"] = f"restored-{source_cell.name}"[:64]
        return cell


class HideHiddenTests(ClearHiddenTests):
    """Feedback without hidden tests: their lines go, and a failed hidden check shows only
    `AssertionError: <its message>`, which says what to fix without showing the test."""

    enforce_metadata = False  # feedback cells no longer carry the source's metadata checks

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or self.begin_test_delimeter not in cell.source:
            return cell, resources
        self._remove_hidden_test_region(cell)
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources


TIMED_OUT = "labkit_timed_out"  # resources key: indices of the cells stopped at the time limit


class TimedExecute(Execute):
    """nbgrader's Execute, noting the cells it stopped at its time limit in `resources`, which
    stay in this process: the kernel cannot add a cell to the list or take one off. The
    referee then gives those cells a short second run (`child.TIMED_OUT_CELL_S`)."""

    def preprocess(self, nb, resources, *args, **kwargs):
        self._timed_out = []
        nb, resources = super().preprocess(nb, resources, *args, **kwargs)
        resources[TIMED_OUT] = frozenset(self._timed_out)
        return nb, resources

    async def _async_handle_timeout(self, timeout, cell=None):
        self._timed_out += [i for i, c in enumerate(self.nb.cells) if c is cell]
        return await super()._async_handle_timeout(timeout, cell)


class SandboxedKernelManager(AsyncKernelManager):
    """The student's kernel, started through `labkit.grading.sandbox` where isolation is possible:
    talking to nbgrader over Unix sockets in a folder of its own (the sandbox has no
    network), with a private artifacts folder and home, the shared artifacts read-only."""

    async def _async_pre_start_kernel(self, **kw):
        cwd = Path(kw.get("cwd") or os.getcwd()).resolve()
        self._sandbox = None
        if sandbox.isolation() == "sandbox":
            sockets = Path(tempfile.mkdtemp(prefix="lk-"))  # short: a socket path has at most 107 bytes
            self.transport, self.ip = "ipc", str(sockets / "k")
            self.connection_file = str(sockets / "kernel.json")
            self._sandbox = kernel_spec(cwd, sockets)
            self._sandbox["give"] = [self.connection_file]  # written by jupyter_client before the launch
        return await super()._async_pre_start_kernel(**kw)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        return sandbox.command(cmd, self._sandbox) if self._sandbox else cmd

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart)
        if self._sandbox and not restart:
            sandbox.cleanup(self._sandbox)


def kernel_spec(cwd: Path, sockets: Path) -> dict:
    """The sandbox of a student's kernel working in `cwd` (autograded/<student>/<assignment>):
    its sockets' folder and the submission's artifacts writable. Its home is new for each
    kernel, made here: a home inside the artifacts folder, which the student's earlier kernel
    could write, let a student put a link to the course in its place, and root followed it."""
    spec = sandbox.spec_for(cwd, writable={str(sockets): sockets, f"{sandbox.MOUNT_ROOT}/artifacts": _artifacts_for(cwd)},
                            env={paths.ARTIFACTS_ENV: f"{sandbox.MOUNT_ROOT}/artifacts"}, student=cwd.parent.name)
    spec["cleanup"].append(str(sockets))
    return spec


def _artifacts_for(cwd: Path) -> Path:
    """The submission's own artifacts: `$LABKIT_ARTIFACTS` as `labkit grade` sets it for each
    submission. Under a plain `nbgrader autograde`, a folder for the student being graded (the
    notebooks of one submission run one after another and share it); the previous student's
    is removed, so a class leaves one submission's graphs behind, not 200."""
    explicit = os.environ.get(paths.ARTIFACTS_ENV)
    if explicit:
        return Path(explicit)
    parent = Path(tempfile.gettempdir()) / "labkit-autograde-artifacts"
    student = cwd.parent.name  # autograded/<student>/<assignment>
    parent.mkdir(mode=0o700, exist_ok=True)
    info = parent.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise RuntimeError(f"{parent} is not a folder of the grader's own: remove it and grade again")
    for other in parent.iterdir():  # rmtree does not follow links
        if other.name != student or student not in _FRESH:  # a new grading process: a new uid, new files
            shutil.rmtree(other, ignore_errors=True)
    _FRESH.add(student)
    return parent / student


_FRESH: set[str] = set()  # students whose artifacts this process started afresh


class Referee(NbGraderPreprocessor):
    """Autograde: each graded cell's score from `labkit.grading.referee`'s verdict, computed outside
    the student's kernel, instead of from what the kernel printed. The kernel's own errors are
    removed from graded cells; a failed verdict adds one with the referee's message. What the
    referee refused is kept in the notebook's metadata (`labkit_referee`) for the summary.
    Runs after execution and after the metadata is cleared, before the scores are saved."""

    cell_timeout = Integer(120, help="seconds for one student cell when the referee runs it again").tag(config=True)

    def preprocess(self, nb, resources):
        from . import referee

        name = resources.get("unique_key") or ""
        student = resources.get("nbgrader", {}).get("student", "")
        folder = Path(resources.get("metadata", {}).get("path") or os.getcwd()).resolve()
        root = sandbox.course_root(folder) or folder
        report = referee.grade_notebook(name, nb, trust.seed(trust.course_key(root), student, name), student,
                                         self.cell_timeout, resources.get(TIMED_OUT, frozenset()))
        if not report.verdicts and name not in referee.known_notebooks():
            return nb, resources  # not one of the lab's notebooks: nbgrader's own grading stands
        for cell in nb.cells:
            if not _is_check(cell):
                continue
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            verdict = report.verdicts.get(grade_id, referee.Verdict(False, "the referee has no check for this cell"))
            cell.outputs = [o for o in cell.get("outputs", []) if o.output_type != "error"]
            if verdict.passed:
                cell.outputs.append(nbformat.v4.new_output(
                    "stream", name="stdout", text="[referee] passed (graded outside your kernel)\n"))
            else:
                cell.outputs.append(nbformat.v4.new_output(
                    "error", ename="AssertionError", evalue=verdict.message,
                    traceback=[f"AssertionError: {verdict.message}"]))
        nb.metadata["labkit_referee"] = {"integrity": report.integrity, "isolation": report.isolation}
        return nb, resources


class PrepareShared(NbGraderPreprocessor):
    """Autograde, before execution: what the notebook reads from the shared artifacts is built
    here, in nbgrader's (trusted) process, since the sandboxed kernel cannot write there."""

    def preprocess(self, nb, resources):
        from . import referee

        referee.prepare(resources.get("unique_key") or "", resources.get("nbgrader", {}).get("student", ""))
        return nb, resources


class ReleaseFeedback(ExchangeReleaseFeedback):
    """`nbgrader release_feedback` for a class that handed in both ways. nbgrader's own stops
    with FileNotFoundError at the first student who did not submit through the exchange: a
    `make handin` zip collected by `zip_collect` has no submission secret, the key under which
    a student fetches feedback. Those students are named and left out; their HTML is in
    feedback/<id>/ for the instructor to send."""

    def copy_files(self):
        pages = [Path(page) for page in glob.glob(os.path.join(self.src_path, "*.html"))]  # feedback/<id>/<a>/
        outside = sorted({page.parent.parent.name for page in pages
                          if not (page.parent / "submission_secret.txt").is_file()})
        if outside:
            self.log.warning("Not submitted through the exchange, so not released: %s. Send them "
                             "feedback/<student>/%s/ yourself.", ", ".join(outside), self.coursedir.assignment_id)
            excluded = set(filter(None, self.coursedir.student_id_exclude.split(",")))
            self.coursedir.student_id_exclude = ",".join(sorted(excluded | set(outside)))
        super().copy_files()
