"""Where the lab writes what it generates (converted models, ONNX files, reports).

Never inside the assignment folder: nbgrader copies that folder into every
release and submission, and an ONNX file is gigabytes.

Two roots. `artifacts_dir()` holds what a student's own code writes (notebook 02's export,
notebook 03's INT8 graph, the figures notebook 04 records). `shared_dir()` holds what labkit
builds the same way for everyone (the converted model, the KV-cache graphs, benchmark
tables, sensitivity scans). They are one folder unless `$LABKIT_SHARED_ARTIFACTS` is set:
grading gives each submission an artifacts folder of its own, so two submissions graded at
once never overwrite each other's graphs, and one shared folder per machine, so neither
rebuilds what the other already built.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

ARTIFACTS_ENV = "LABKIT_ARTIFACTS"
SHARED_ENV = "LABKIT_SHARED_ARTIFACTS"
MODEL_FILE = "model.onnx"  # every variant folder holds model.onnx + model.onnx.data


def artifacts_dir() -> Path:
    """`$LABKIT_ARTIFACTS`, else `$XDG_CACHE_HOME/labkit`, else `~/.cache/labkit`."""
    explicit = os.environ.get(ARTIFACTS_ENV)
    if explicit:
        root = Path(explicit).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "labkit"
    root.mkdir(parents=True, exist_ok=True)
    return root


def reference_dir() -> Path:
    """Where the referee's trusted builds of the students' variants live
    (`grading.trust.trusted_artifacts`); a graded kernel reads it, read-only."""
    return shared_dir() / "reference"


def shared_dir() -> Path:
    """`$LABKIT_SHARED_ARTIFACTS`, else `artifacts_dir()`."""
    explicit = os.environ.get(SHARED_ENV)
    if not explicit:
        return artifacts_dir()
    root = Path(explicit).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


# The graphs students build in notebooks 02 and 03; every other variant is labkit's own.
STUDENT_VARIANTS = ("fp32", "int8", "int8-naive")


def onnx_dir(model_name: str, variant: str = "fp32") -> Path:
    """Where a model's ONNX files live: <root>/onnx/<model>/<variant>/, the root being
    `artifacts_dir()` for the students' graphs and `shared_dir()` for the others."""
    root = artifacts_dir() if variant in STUDENT_VARIANTS else shared_dir()
    return root / "onnx" / model_name / variant


def artifact_path(*parts: str) -> Path:
    """A path below the artifacts directory; its parent folder exists."""
    path = artifacts_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def shared_path(*parts: str) -> Path:
    """A path below the shared directory; its parent folder exists."""
    path = shared_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def building(target: Path):
    """Hold an exclusive lock on `target` (a file lock beside it) while checking whether it
    exists and building it: of two processes that need it at once (two notebooks, two
    submissions being graded), one builds and the other waits, then finds it built."""
    from filelock import FileLock

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.with_name(target.name + ".lock"))
    try:
        lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        # A read-only folder (the shared artifacts, as a graded kernel sees them): nobody here
        # can build in it, so what is there is what there is.
        yield
        return
    try:
        yield
    finally:
        lock.release()


def cached_table(path: Path, compute, reuse: bool = True, on_reuse=None):
    """The CSV table at `path` if there is one (and `reuse`), else `compute()`'s, saved there
    under the lock. In a read-only folder (the shared artifacts, as a graded kernel sees them)
    the table is computed and not kept."""
    import pandas as pd

    path = Path(path)
    with building(path):
        if reuse and path.is_file():
            if on_reuse:
                on_reuse(path)
            return pd.read_csv(path)
        table = compute()
        try:
            table.to_csv(path.with_suffix(".partial"), index=False)
            path.with_suffix(".partial").replace(path)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
    return table


def check_writable(out_dir: Path, needed_bytes: int, error: type[Exception]) -> None:
    """Fail before any work when `out_dir` cannot be written or its disk is too small."""
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot write to {parent} ({exc.strerror}): choose a writable folder "
                    "(or set LABKIT_ARTIFACTS to one)") from exc
    if not os.access(parent, os.W_OK):
        raise error(f"cannot write to {parent}: choose a writable folder (or set LABKIT_ARTIFACTS to one)")
    free = shutil.disk_usage(parent).free
    if free < needed_bytes:
        raise error(f"not enough disk in {parent}: this needs about {needed_bytes / 1e9:.1f} GB, "
                    f"{free / 1e9:.1f} GB are free. Free space or set LABKIT_ARTIFACTS to a larger disk.")


@contextlib.contextmanager
def staged_dir(out_dir: str | Path, error: type[Exception]):
    """Yield `<out_dir>.partial` to write into; on success it replaces `out_dir`.
    On any failure (a full disk, Ctrl-C) the partial folder is removed and a
    previous `out_dir` stays untouched, so no half-written model ever carries
    the final name."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        yield partial
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise error(f"the disk filled up while writing {partial}; nothing was kept. "
                        "Free space or set LABKIT_ARTIFACTS to a larger disk.") from exc
        raise error(f"could not write {partial}: {exc}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for path in partial.rglob("*"):  # some writers make 0600 files; a graded kernel (another uid) reads them
        path.chmod(0o755 if path.is_dir() else 0o644)
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    partial.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
