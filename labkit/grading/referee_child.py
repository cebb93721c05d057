"""The referee's child: `python -m labkit.grading.referee_child FD`. Untrusted by design.

It imports a copy of labkit without the notebooks' answers (`labkit.grading.lockdown.strip`). It
reads from stdin, as JSON lines: first where labkit's original package is when no sandbox
hides it, then for each notebook the trusted prelude that stands in for
its setup cells, the context values it needs and the student's cells, each followed by one
probe at a time (an expression over the student's names, with inputs bound to `probe`). It
replies on file descriptor FD, one JSON line each: ready, whether each cell ran, then each
probe's value or error, and the forbidden functions reached. The referee decides; nothing here can change a grade except by giving a
right or wrong answer.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import traceback

from . import lockdown, wire

# What every notebook's prelude imports, loaded before the first notebook arrives: the referee
# starts its child before the student's kernel runs (`referee.prepare`), so these imports
# overlap the kernel instead of adding to the grading time. Third-party only: labkit's own
# modules are imported by the preludes, after the lockdown.
PRELOADED = ("numpy", "torch", "transformers", "onnx", "onnxruntime")


def _error(exc: BaseException) -> str:
    """The exception's type and message, and the student's own line that raised it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell")]
    where = f" ({frames[-1].filename[1:-1]}, line {frames[-1].lineno})" if frames else ""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}{': ' + message[0][:300] if message else ''}{where}"


@contextlib.contextmanager
def _time_limit(seconds: float, why: str = ""):
    """TimeoutError in the student's code after `seconds` (an honest endless loop costs one
    cell or probe; code that defeats this is stopped by the referee's own deadline)."""
    def expire(*_):
        raise TimeoutError(f"stopped after {seconds:.0f} s{why}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_cells(setup: dict) -> tuple[dict, dict, list[dict]]:
    """A fresh namespace: the notebook's trusted prelude, then the student's cells. Before
    them, the referee's own names (`trusted`) in a namespace the cells never see; a probe
    sees them over the student's."""
    namespace = {"__name__": "__main__", "context": wire.decode(setup["context"])}
    trusted: dict = {"__name__": "__referee__"}
    try:
        exec(compile(setup["prelude"], "<referee prelude>", "exec"), namespace)
        exec(compile(setup.get("trusted", ""), "<referee trusted>", "exec"), trusted)
    except Exception:  # noqa: BLE001 - the referee's own fault, not the student's: say so
        return namespace, {}, [{"ok": False, "error": "the grader's setup failed: "
                                + traceback.format_exc(limit=-3).strip().replace("\n", " | "), "hits": []}]
    trusted = {k: v for k, v in trusted.items() if not k.startswith("_")}
    cells = []
    for i, code in enumerate(setup["cells"]):
        before = len(lockdown.HITS)
        limit, full = setup["limits"][i], setup["cell_s"]
        why = "" if limit == full else f" (it had already run past the {full:.0f} s limit in your notebook)"
        try:
            with _time_limit(limit, why):
                exec(compile(code, f"<cell {i + 1}>", "exec"), namespace)
            cells.append({"ok": True})
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the cell failed
            cells.append({"ok": False, "error": _error(exc)})
        cells[-1]["hits"] = lockdown.HITS[before:]
    return namespace, trusted, cells


def main(fd: int) -> None:
    out = os.fdopen(fd, "w", buffering=1)
    send = lambda message: out.write(wire.dumps(message) + "\n")  # noqa: E731
    original = json.loads(sys.stdin.readline()).get("guard")
    if original:  # no sandbox: labkit's original files are on disk, so fence them off
        lockdown.guard(original)
    for module in PRELOADED:
        importlib.import_module(module)
    send({"ready": True})
    namespace: dict = {}
    trusted: dict = {}
    for line in sys.stdin:
        message = json.loads(line)
        if "cells" in message:  # the next notebook
            namespace, trusted, cells = _run_cells(message)
            send({"cells": cells})
            continue
        scope = {**namespace, **trusted, "probe": wire.decode(message["inputs"])}
        before = len(lockdown.HITS)
        try:
            with _time_limit(message["seconds"]):
                value = eval(compile(message["code"], "<probe>", "eval"), scope)
            reply = {"ok": True, "value": wire.encode(value)}
        except BaseException as exc:  # noqa: BLE001
            reply = {"ok": False, "error": _error(exc)}
        reply["hits"] = lockdown.HITS[before:]
        send(reply)


if __name__ == "__main__":
    main(int(sys.argv[1]))
