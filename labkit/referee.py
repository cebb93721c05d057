"""The referee: grades computed where the student's code cannot reach.

nbgrader runs a submission's notebook in a Jupyter kernel, and the graded cells' checks run
in that same kernel: code in a solution cell can replace the checks, hide their errors or
call labkit's own implementation of the task. So the checks in the notebook are the
student's instant feedback, and the points come from here, after the notebook has run:

- the referee process (nbgrader's, never the student's) starts a fresh child interpreter
  (`labkit.referee_child`, in the sandbox when grading as root) that runs only the student's
  cells, importing a labkit without the tasks' answers (`labkit.lockdown`); one child serves
  all of a submission's notebooks, each in a fresh namespace;
- it asks the child for the student's functions' results on inputs it draws itself (per
  student and notebook, from a key the student never sees), and computes the reference
  here, from graphs it built itself (`reference/` in the shared folder, which the sandbox
  reads but cannot write; recipe builds and their verdicts in `referee/`, which it cannot
  even read);
- each graded cell's verdict is one task of `labkit.verdicts`; nbgrader's score for the cell
  is set from it (`nbgrader_plugins.Referee`).

A child's reply is data, never code: all it can do is give a right or a wrong answer.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import integrity, lockdown, paths, sandbox, wire
from .messages import REFUSAL_MARKS, say

KEY_FILE = ".labkit-referee-key"   # in the course folder: the secret the inputs are drawn from
CHILD_START_S = 120.0              # importing torch and labkit
CELL_S = 120.0                     # one student cell in the child (nbgrader's cell timeout when set)
PROBE_S = 300.0                    # one probe
GRACE_S = 60.0                     # beyond the child's own limits, before the referee stops it
# The most the child may take over one notebook's cells, however many cells a student adds:
# each cell has its own limit in the child, and a child that blocks its alarm is stopped here.
NOTEBOOK_S = 1800.0
LOG_TAIL_BYTES = 4096              # what the referee reads of the child's own output
# A cell nbgrader already stopped at its time limit has had its time: run again, it gets this
# long, enough for what it defines before the slow part. Running it for the full limit again
# doubled what an endless loop cost (notebook 01: 116 s with a 45 s limit, against 26 s).
TIMED_OUT_CELL_S = 5.0


class ChildGone(AssertionError):
    """The child stopped answering (it exited, or a probe took too long)."""


@dataclass
class Verdict:
    passed: bool
    message: str = ""


@dataclass
class Report:
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    integrity: list[str] = field(default_factory=list)   # what the referee saw that it refused
    isolation: str = ""


# ---------------------------------------------------------------- the secret and the seed

def course_key(course_root: Path) -> bytes:
    """The course's referee key, made on first use, readable only by its owner."""
    path = Path(course_root) / KEY_FILE
    if not path.is_file():
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def seed(key: bytes, student: str, notebook: str) -> int:
    """The same draws for the same student and notebook (a regrade gives the same score)."""
    return int.from_bytes(hashlib.sha256(key + f"\0{student}\0{notebook}".encode()).digest()[:8], "little")


def private_dir() -> Path:
    """The referee's own folder (recipes it applied and their verdicts): owner-only, so a
    sandboxed kernel, which sees the shared artifacts read-only, cannot even list it."""
    folder = paths.shared_dir() / "referee"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


@contextlib.contextmanager
def trusted_artifacts():
    """labkit's builders write the students' graph variants (fp32, int8) to the shared folder's
    `reference/` while in this block: the submission's own artifacts folder is the student's to
    write, so nothing in it can be a reference. The sandbox sees `reference/` read-only."""
    before = {name: os.environ.get(name) for name in (paths.ARTIFACTS_ENV, paths.SHARED_ENV)}
    shared = paths.shared_dir()
    os.environ.update({paths.SHARED_ENV: str(shared), paths.ARTIFACTS_ENV: str(paths.reference_dir())})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------- the child

@dataclass
class Reply:
    ok: bool
    value: object = None
    error: str = ""
    hits: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Child:
    """A fresh interpreter running one submission's cells, notebook after notebook, asked one
    probe at a time. It is started with every notebook's answers disarmed."""

    def __init__(self, forbidden: list[str], student: str = ""):
        self.workdir = Path(tempfile.mkdtemp(prefix="labkit-referee-"))
        self.hits: list[str] = []
        self.cells: list[dict] = []
        self.stripped = Path(tempfile.mkdtemp(prefix="labkit-stripped-"))
        package = lockdown.strip(forbidden, self.stripped)
        isolated = sandbox.isolation() == "sandbox"
        self.spec = sandbox.spec_for(self.workdir, package=package, student=student, referee=True)
        # Where the child's files land: in the sandbox, the folder it sees as its own (a new
        # one, made by spec_for); without one, the working folder itself.
        self.files = Path(self.spec["work"]) if isolated else self.workdir
        env = dict(os.environ)
        if not isolated:  # the copy comes first on the path (labkit's editable finder comes last)
            env["PYTHONPATH"] = os.pathsep.join([str(self.stripped), *filter(None, [env.get("PYTHONPATH")])])
        read, write = os.pipe()
        cmd = sandbox.command([sys.executable, "-m", "labkit.referee_child", str(write)], self.spec)
        self.log = open(self.workdir / "child.log", "w+")  # the child's own prints, for the instructor
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=subprocess.STDOUT, pass_fds=(write,), start_new_session=True,
                                     text=True, env=env)
        os.close(write)
        self.replies = os.fdopen(read, "rb")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.replies, selectors.EVENT_READ)
        self.buffer = b""
        self._send({"guard": None if isolated else str(lockdown.PACKAGE)})
        self.ready = False  # its "ready" is read before the first request (`_ask`)

    def _ask(self, message: dict, timeout: float) -> dict:
        """One request and its reply. The child is started without waiting for its imports
        (`prepare`), so its "ready" is read before the first request."""
        if not self.ready:
            self._receive(CHILD_START_S)
            self.ready = True
        self._send(message)
        return self._receive(timeout)

    def notebook(self, prelude: str, context: dict, cells: list[str], cell_s: float = CELL_S,
                 timed_out: list[int] = (), trusted: str = "") -> None:
        """Run the next notebook's prelude and the student's cells in a fresh namespace; the
        cells at positions `timed_out` get `TIMED_OUT_CELL_S` instead of `cell_s`."""
        self.hits = []
        limits = [min(cell_s, TIMED_OUT_CELL_S) if n in timed_out else cell_s for n in range(len(cells))]
        self.cells = self._ask({"prelude": prelude, "trusted": trusted, "context": wire.encode(context), "cells": cells,
                                "limits": limits, "cell_s": cell_s},
                               CHILD_START_S + min(sum(limits), max(cell_s, NOTEBOOK_S)) + GRACE_S)["cells"]
        for cell in self.cells:
            self.hits += [str(h) for h in cell["hits"]][:20]

    def _send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(wire.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed after an earlier probe timed out
            raise ChildGone(self._gone()) from exc

    def _gone(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return say("referee.timeout", limit="")
        last = [line for line in self.log_tail().splitlines() if line.strip()][-1:]
        return say("referee.process_ended", code=code, last=": " + last[0][:200] if last else "")

    def log_tail(self) -> str:
        """The end of the child's own output. Only the end: the child can make its output
        file any size, sparse terabytes included."""
        with contextlib.suppress(OSError, ValueError):
            size = os.fstat(self.log.fileno()).st_size
            return os.pread(self.log.fileno(), LOG_TAIL_BYTES, max(0, size - LOG_TAIL_BYTES)).decode(errors="replace")
        return ""

    def _receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                self.close()
                raise ChildGone(say("referee.timeout", limit=f" ({timeout:.0f} s)"))
            chunk = os.read(self.replies.fileno(), 1 << 20)
            if not chunk:
                raise ChildGone(self._gone())
            self.buffer += chunk
            if len(self.buffer) > wire.MAX_LINE:
                self.close()
                raise ChildGone(say("referee.too_much"))
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError
            return message
        except ValueError as exc:
            self.close()
            raise ChildGone(say("referee.garbled")) from exc

    def run(self, code: str, timeout: float | None = None, **inputs) -> Reply:
        """Evaluate `code` (an expression over the student's names; `probe` holds `inputs`)
        within `timeout` seconds (default PROBE_S)."""
        timeout = PROBE_S if timeout is None else timeout
        started = time.perf_counter()
        message = self._ask({"code": code, "inputs": wire.encode(inputs), "seconds": timeout}, timeout + GRACE_S)
        seconds = time.perf_counter() - started
        hits = [str(h) for h in message.get("hits", [])][:20]
        self.hits += hits
        try:
            value = wire.decode(message.get("value"))
        except (ValueError, TypeError, KeyError):
            value, message = None, {"ok": False, "error": say("referee.unreadable_value")}
        return Reply(bool(message.get("ok")), value, str(message.get("error", ""))[:2000], hits, seconds)

    def value(self, code: str, what: str, timeout: float | None = None, **inputs):
        """The probe's value; a failed probe fails the task with what raised."""
        reply = self.run(code, timeout, **inputs)
        if not reply.ok:
            raise AssertionError(say("referee.raised", what=what, error=reply.error) + self.cell_note())
        return reply.value

    def cell_note(self) -> str:
        failed = [(i + 1, c["error"]) for i, c in enumerate(self.cells) if not c["ok"]]
        return "\n" + say("referee.cell_failed", cell=failed[0][0], error=failed[0][1]) if failed else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.log.close()
        sandbox.cleanup(self.spec)

        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.stripped, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- grading a notebook

def known_notebooks() -> set[str]:
    from . import verdicts

    return set(verdicts.NOTEBOOKS)


def _student_indices(nb) -> list[int]:
    """Where the code the student wrote is: solution cells and cells they added, in order."""
    return [i for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and (cell.metadata.get("nbgrader", {}).get("solution")
                                             or not cell.metadata.get("nbgrader"))]


def student_cells(nb) -> list[str]:
    """The code the student wrote: solution cells and cells they added, in order."""
    return [nb.cells[i].source for i in _student_indices(nb)]


def prepare(name: str, student: str = "") -> None:
    """Before notebook `name` of `student`'s submission runs: start the submission's child,
    whose imports then overlap this preparation and the kernel, and build, in this trusted
    process, what the kernel will read from the shared folder (it sees that folder read-only).
    With the child's imports done here (`referee_child.PRELOADED`), its part of grading one
    notebook 01 fell from 6.3-7.0 s to 4.5 s, and the whole notebook, graded alone with the
    kernel stopped at once (nbgrader_config.py), from 22.1 s to 14.6 s (VNNI, 2 threads)."""
    from . import verdicts

    spec = verdicts.NOTEBOOKS.get(name)
    if spec is None:
        return
    with contextlib.suppress(ChildGone):  # grade_notebook says so, or starts another
        child_for(student)
    if spec.prepare is not None:
        with trusted_artifacts():
            spec.prepare()


_CHILDREN: dict[str, Child] = {}  # one per submission, for all its notebooks (starting one costs ~6 s)


def child_for(student: str) -> Child:
    """The submission's child, started on its first notebook; a child that died is replaced."""
    from . import verdicts

    child = _CHILDREN.get(student)
    if child is None or child.proc.poll() is not None:
        for other in list(_CHILDREN):  # nbgrader grades one submission after another
            _CHILDREN.pop(other).close()
        child = _CHILDREN[student] = Child(verdicts.forbidden(), student)
    return child


atexit.register(lambda: [c.close() for c in _CHILDREN.values()])


def grade_notebook(name: str, nb, draw_seed: int, student: str = "", cell_s: float = CELL_S,
                   timed_out: frozenset[int] = frozenset()) -> Report:
    """The verdict of every graded cell of notebook `name` (e.g. '01_env') the referee knows.
    `timed_out`: indices in `nb.cells` of the cells nbgrader stopped at its time limit
    (`nbgrader_plugins.TimedExecute`); the child runs those again for `TIMED_OUT_CELL_S` only."""
    import numpy as np

    from . import verdicts

    report = Report(isolation=sandbox.isolation())
    spec = verdicts.NOTEBOOKS.get(name)
    if spec is None:
        return report
    rng = np.random.default_rng(draw_seed)
    with trusted_artifacts():
        ctx = spec.context(rng)
    where = _student_indices(nb)

    def ran_cells() -> Child:
        child = child_for(student)
        child.notebook(spec.prelude, ctx.for_child, [nb.cells[i].source for i in where], cell_s,
                       [n for n, i in enumerate(where) if i in timed_out], spec.trusted)
        return child

    try:
        child = ran_cells()
    except ChildGone as exc:
        report.verdicts = {gid: Verdict(False, str(exc)) for gid in spec.tasks}
        return report
    hits: list[str] = []
    with tempfile.TemporaryDirectory(prefix="labkit-referee-") as scratch:
        ctx.scratch = Path(scratch)
        for grade_id, task in spec.tasks.items():
            report.verdicts[grade_id], child = _verdict(task, child, ctx, ran_cells)
            hits += child.hits
    report.integrity = (_integrity(name, child, hits)
                        + [f"{name}: {sign}" for sign in integrity.scan(student_cells(nb))])
    return report


def _verdict(task, child: Child, ctx, ran_cells) -> tuple[Verdict, Child]:
    """One task's verdict, and the child for the next task. A task costs itself only: an
    error of the check itself (a student's function that returned None, say) fails this task
    with what went wrong, and a child that stopped answering (a probe past its time limit) is
    replaced, the notebook's cells run again, for the next task."""
    before = len(child.hits)
    try:
        with trusted_artifacts():
            task(child, ctx)
        verdict = Verdict(True)
    except ChildGone as exc:
        verdict = Verdict(False, str(exc))
        try:
            child = ran_cells()
        except ChildGone:
            pass  # the next task fails the same way, saying so
        return verdict, child
    except AssertionError as exc:
        verdict = Verdict(False, str(exc))
    except Exception as exc:  # noqa: BLE001 - the check's own error, caused by what the student returned
        verdict = Verdict(False, say("referee.check_failed", error=f"{type(exc).__name__}: {exc}"[:300]))
    reached = child.hits[before:]
    if reached:
        verdict = Verdict(False, say("referee.reference_called", name=reached[0]))
    return verdict, child


def _integrity(name: str, child: Child, hits: list[str]) -> list[str]:
    found = [f"{name}: called {h}" for h in dict.fromkeys(hits)]
    found += [f"{name}: cell {i + 1} refused ({c['error'][:120]})" for i, c in enumerate(child.cells)
              if not c["ok"] and any(mark in c["error"] for mark in REFUSAL_MARKS)]
    return found
