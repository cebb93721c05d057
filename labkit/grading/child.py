"""The referee's handle on its child (`labkit.grading.referee_child`): a fresh interpreter,
in the sandbox when grading as root, running one submission's cells and answering one probe
at a time, within time limits the referee keeps. What it replies is data (`wire`), never
code.
"""
from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import lockdown, sandbox, wire
from ..messages import say

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
        cmd = sandbox.command([sys.executable, "-m", "labkit.grading.referee_child", str(write)], self.spec)
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
        last = [line for line in self.log_tail().replace("\0", "").splitlines() if line.strip()][-1:]
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
