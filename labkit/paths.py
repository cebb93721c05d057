"""Where the lab writes what it generates (converted models, ONNX files, reports).

Never inside the assignment folder: nbgrader copies that folder into every
release and submission, and an ONNX file is gigabytes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

ARTIFACTS_ENV = "LABKIT_ARTIFACTS"
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


def onnx_dir(model_name: str, variant: str = "fp32") -> Path:
    """Where a model's ONNX files live: <artifacts>/onnx/<model>/<variant>/."""
    return artifacts_dir() / "onnx" / model_name / variant


def artifact_path(*parts: str) -> Path:
    """A path below the artifacts directory; its parent folder exists."""
    path = artifacts_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    partial.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
