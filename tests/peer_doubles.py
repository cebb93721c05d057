"""Peers that fail on purpose, for the benchmark's tests. Each is an opener that
peer_process.PeerProcess runs in a child process: it returns the runner."""
import ctypes
import time


def segfaulting():
    """Opens, then dies in its first run as llama.cpp's AMX build did: a read of address 0."""
    def run(ids, new_tokens):
        ctypes.string_at(0)
    return run


def hanging():
    def run(ids, new_tokens):
        time.sleep(3600)
    return run


def not_installed():
    import labkit_no_such_engine  # noqa: F401  - ModuleNotFoundError in the child


def counting(tokens):
    """A peer that works: the same `tokens` for every prompt, timed as a real run."""
    def run(ids, new_tokens):
        started = time.perf_counter()
        return tokens[:new_tokens], 0.001, time.perf_counter() - started + 0.002
    run.build = "counting double"
    return run
