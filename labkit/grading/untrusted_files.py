"""Root's file operations in a folder a student process can write (the referee child's
working folder): nothing there is followed. Every step opens relative to a descriptor with
O_NOFOLLOW, so a link, a FIFO or a folder swapped in between two calls is refused, and what
is read out is a regular file of bounded size.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import LabkitError

MAX_BYTES = 8 * 2**30  # a graph the referee copies out: Qwen3-1.7B's FP32 data file is 6.9 GB
_CHUNK = 1 << 20


class NotPlainFile(LabkitError, OSError):
    """What the student's process left is not a plain file or folder; the message names it."""


def _open_folder(root: Path, parts: tuple[str, ...]) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except OSError:
        os.close(fd)
        raise


def copy_out(root: Path, relative: str, target: Path, max_bytes: int = MAX_BYTES) -> bool:
    """Copy `root/relative` to `target` if it is a regular file of at most `max_bytes`;
    False if there is nothing there. NotPlainFile for anything else."""
    *folders, name = Path(relative).parts
    try:
        folder = _open_folder(root, tuple(folders))
    except FileNotFoundError:
        return False
    except OSError as error:
        raise NotPlainFile(f"{relative}: {error.strerror}") from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise NotPlainFile(f"{relative}: {error.strerror}") from None
        with os.fdopen(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
                raise NotPlainFile(f"{relative}: not a regular file of at most {max_bytes} bytes")
            with open(target, "wb") as out:
                left = info.st_size  # no more than it had when checked, whatever it grows to
                while left > 0 and (chunk := source.read(min(_CHUNK, left))):
                    out.write(chunk)
                    left -= len(chunk)
        return True
    finally:
        os.close(folder)


def copy_in(source: Path, root: Path, name: str) -> None:
    """Copy the folder `source`'s files into a new folder `root/name`, made here: nothing
    that exists there already is written through (FileExistsError instead)."""
    folder = _open_folder(root, ())
    try:
        os.mkdir(name, 0o755, dir_fd=folder)
        into = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
    finally:
        os.close(folder)
    try:
        for path in sorted(Path(source).iterdir()):
            fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=into)
            with os.fdopen(fd, "wb") as out, open(path, "rb") as data:
                while chunk := data.read(_CHUNK):
                    out.write(chunk)
    finally:
        os.close(into)
