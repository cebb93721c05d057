"""The referee: grades computed where the student's code cannot reach.

nbgrader runs a submission's notebook in a Jupyter kernel, and the graded cells' checks run
in that same kernel: code in a solution cell can replace the checks, hide their errors or
call labkit's own implementation of the task. So the checks in the notebook are the
student's instant feedback, and the points come from here, after the notebook has run:

- the referee process (nbgrader's, never the student's) starts a fresh child interpreter
  (`labkit.grading.referee_child`, in the sandbox when grading as root) that runs only the student's
  cells, importing a labkit without the tasks' answers (`labkit.grading.lockdown`); one child serves
  all of a submission's notebooks, each in a fresh namespace;
- it asks the child for the student's functions' results on inputs it draws itself (per
  student and notebook, from a key the student never sees), and computes the reference
  here, from graphs it built itself (`reference/` in the shared folder, which the sandbox
  reads but cannot write; recipe builds and their verdicts in `referee/`, which it cannot
  even read);
- each graded cell's verdict is one task of `labkit.grading.verdicts`; nbgrader's score for the cell
  is set from it (`nbgrader_plugins.Referee`).

A child's reply is data, never code: all it can do is give a right or a wrong answer.
"""
from __future__ import annotations

import atexit
import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import integrity, sandbox
from .child import CELL_S, Child, ChildGone
from .trust import trusted_artifacts
from ..messages import REFUSAL_MARKS, say


@dataclass
class Verdict:
    passed: bool
    message: str = ""


@dataclass
class Report:
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    integrity: list[str] = field(default_factory=list)   # what the referee saw that it refused
    isolation: str = ""


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
