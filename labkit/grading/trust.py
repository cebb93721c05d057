"""What only the grader holds: the course's key and the draws it seeds, the referee's own
folder, and the block in which labkit's builders write the references students are graded
against.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from .. import paths

KEY_FILE = ".labkit-referee-key"   # in the course folder: the secret the inputs are drawn from


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
