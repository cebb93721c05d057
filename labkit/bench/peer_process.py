"""A peer engine in a child process of its own, so that a crash, a hang or a missing package
costs the peer's row and nothing else: not the benchmark, not `make lab`, not the notebook's
kernel, not the test run. (llama.cpp's native build segfaulted in its first decode on a
Sapphire Rapids Xeon and took the whole pytest process with it.)

PeerProcess(name, opener, args)(ids, new_tokens) answers like an in-process runner;
`opener(*args)` runs in the child and returns that runner. The child is started with
multiprocessing's "spawn": a fresh interpreter, none of the parent's threads or locks.
"""
from __future__ import annotations

import multiprocessing
import resource
import signal
import traceback
from pathlib import Path

from ..errors import LabkitError

# Long enough for the slowest real call (opening Qwen3-1.7B's fused INT8 graph in
# onnxruntime-genai, or a 1024-token prompt on 2 cores), short enough that a hang is a row.
TIMEOUT_S = 300.0


class PeerFailed(LabkitError, RuntimeError):
    """A peer could not give its answer; the message ("crashed (SIGSEGV) in a run") is
    what its benchmark row's status says."""


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over from the parent the child was forked from (every peer row read 2.69 GB,
    the benchmark's own peak), while VmHWM starts again with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the best there is


def _last_line(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]


def _serve(conn, opener, args) -> None:
    """The child: open the peer, then answer (ids, new_tokens) requests until None."""
    try:
        run = opener(*args)
    except BaseException as error:  # noqa: BLE001 - the parent reports it as the row's status
        conn.send(("error", _last_line(error)))
        return
    conn.send(("ready", getattr(run, "build", ""), _peak_rss_bytes()))
    while (request := conn.recv()) is not None:
        try:
            conn.send(("ok", run(*request), _peak_rss_bytes()))
        except Exception as error:  # noqa: BLE001
            conn.send(("error", _last_line(error)))


def signal_name(exitcode: int | None) -> str:
    """"SIGSEGV" for a child killed by signal 11, "exit code 3" otherwise."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class PeerProcess:
    """One peer in its own process; call it like the runner it wraps. `build` is what the
    runner says it was compiled with, `peak_rss_bytes` the child's peak memory so far."""

    def __init__(self, name: str, opener, args: tuple = (), timeout_s: float = TIMEOUT_S):
        self.name, self.timeout_s = name, timeout_s
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, opener, args), daemon=True,
                                        name=f"labkit peer {name}")
        self._process.start()
        child_end.close()
        _, self.build, self.peak_rss_bytes = self._answer("opening")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, ids, new_tokens: int):
        self._send((ids, new_tokens), "a run")
        _, result, self.peak_rss_bytes = self._answer("a run")
        return result

    def _send(self, message, doing: str) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError):
            raise self._failure(doing) from None

    def _answer(self, doing: str):
        if not self._conn.poll(self.timeout_s):
            self.close(ask=False)
            raise PeerFailed(f"timed out after {self.timeout_s:.0f} s in {doing}")
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            raise self._failure(doing) from None
        if message[0] == "error":
            self.close()
            raise PeerFailed(f"failed in {doing}: {message[1]}")
        return message

    def _failure(self, doing: str) -> PeerFailed:
        self._process.join(10)
        how = signal_name(self._process.exitcode)
        self.close()
        return PeerFailed(f"crashed ({how}) in {doing}")

    def close(self, ask: bool = True) -> None:
        """Stop the child (asked first, killed after 5 s; killed at once if not `ask`);
        calling it again does nothing."""
        if self._process.is_alive():
            if ask:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
                self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()
