"""Running a student's code where it cannot reach what it must not: `python -m labkit.sandbox`.

Grading runs two kinds of untrusted process: the student's Jupyter kernel (nbgrader executes
the notebook in it) and the referee's child (`labkit.referee_child`, which re-runs the
student's functions). On Linux as root, each starts through this launcher, which before it
executes the real command:

- makes a new mount namespace and hides, under empty tmpfs mounts, the system temporary
  folder (every other submission's scratch course lives there), /dev/shm, the course folder
  (source notebooks with solutions, `gradebook.db`, other students' `submitted/`) and the
  labkit repository (its `source/`, `tests/` and git history), then binds back only what the
  process needs: its working folder and artifacts (read-write), the Python environment,
  labkit's package and the shared artifacts (read-only);
- makes a new network namespace with no interface up: no Dask scheduler, no other kernel,
  no Internet (the kernel talks to nbgrader over Unix sockets, `transport = "ipc"`);
- drops to an unprivileged uid of its own (100000 + its pid, unique among running
  processes), with no supplementary groups and `no_new_privs`, so it cannot write the shared
  artifacts, read root's files or signal, trace or read another kernel.

Where that is not possible (not root, not Linux) the command runs as it is and
`isolation()` says so; `labkit grade` reports it in the summary.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

NO_SANDBOX_ENV = "LABKIT_NO_SANDBOX"  # set to 1 to run untrusted code unisolated (debugging only)
HIDE_ENV = "LABKIT_SANDBOX_HIDE"      # more folders to hide, os.pathsep-separated
UID_BASE = 100_000
MOUNT_ROOT = "/tmp/.labkit"            # where binds land inside the sandbox (the real /tmp is hidden)

_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
_PR_SET_NO_NEW_PRIVS = 38


def isolation() -> str:
    """'sandbox' when untrusted code runs isolated here, else why not."""
    if os.environ.get(NO_SANDBOX_ENV):
        return f"none (${NO_SANDBOX_ENV} is set)"
    if not sys.platform.startswith("linux"):
        return "none (isolation needs Linux)"
    if os.geteuid() != 0:
        return "none (isolation needs root: grade as root, e.g. in a container)"
    return "sandbox"


def repository() -> Path | None:
    """The labkit repository when labkit runs from a checkout (it holds source/ and tests/)."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "source").is_dir() or (repo / ".git").exists() else None


def course_root(folder: Path) -> Path | None:
    """The nbgrader course a folder lies in (autograded/<student>/<assignment>/ -> course)."""
    for parent in [folder, *folder.parents]:
        if (parent / "nbgrader_config.py").is_file():
            return parent
    return None


def spec_for(cwd: Path, writable: dict[str, Path] | None = None, readable: dict[str, Path] | None = None,
             env: dict[str, str] | None = None, package: Path | None = None) -> dict:
    """What the launcher needs: `writable`/`readable` map where a folder appears inside (under
    MOUNT_ROOT) to the folder outside; `env` is set in the process (paths as seen inside);
    `package` is mounted where labkit's package is (the referee's child gets a copy without
    the answers)."""
    from . import paths

    writable = dict(writable or {})
    readable = dict(readable or {})
    readable.setdefault(f"{MOUNT_ROOT}/shared", paths.shared_dir())
    cleanup = []
    if f"{MOUNT_ROOT}/home" not in writable:
        home = Path(tempfile.mkdtemp(prefix="labkit-home-"))
        writable[f"{MOUNT_ROOT}/home"] = home
        cleanup.append(str(home))
    env = dict(env or {})
    env.setdefault("HOME", f"{MOUNT_ROOT}/home")
    env.setdefault("TMPDIR", "/tmp")
    env.setdefault(paths.SHARED_ENV, f"{MOUNT_ROOT}/shared")
    env.setdefault("MPLCONFIGDIR", f"{MOUNT_ROOT}/home/.matplotlib")
    # torch writes the cache folder it first chose into the environment, so a grading process
    # that imported torch would hand its own path, out of the sandbox's reach, to the kernel.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", f"{MOUNT_ROOT}/home/.cache/torchinductor")
    hide = list(dict.fromkeys(["/tmp", tempfile.gettempdir(), "/dev/shm"]))  # `labkit grade` sets TMPDIR
    repo = repository()
    if repo is not None:
        hide.append(str(repo))
    course = course_root(cwd)
    if course is not None:
        hide.append(str(course))
    hide += [p for p in os.environ.get(HIDE_ENV, "").split(os.pathsep) if p]
    # The Python environment and labkit's package stay where they are (the kernel's argv and the
    # editable install name those paths); binding them onto themselves also makes them read-only.
    keep = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix)} | {str(Path(__file__).resolve().parent)}
    readable.update({p: Path(p) for p in keep})
    if package is not None:
        readable[str(Path(__file__).resolve().parent)] = Path(package)
    # A kept path under a folder others cannot enter (root's home holds pyenv's Python) is
    # reachable only if that folder is replaced by a tmpfs in which the bind recreates the path.
    hide += [str(parent) for p in keep for parent in Path(p).parents if not os.stat(parent).st_mode & 0o001]
    return {"cwd": str(cwd), "hide": hide, "env": env, "cleanup": cleanup,
            "rw": {k: str(v) for k, v in writable.items()}, "ro": {k: str(v) for k, v in readable.items()}}


def command(cmd: list[str], spec: dict) -> list[str]:
    """`cmd` wrapped in the launcher where isolation is possible, else `cmd` itself."""
    if isolation() != "sandbox":
        return list(cmd)
    return [sys.executable, "-m", "labkit.sandbox", json.dumps(spec), *cmd]


def cleanup(spec: dict) -> None:
    for path in spec.get("cleanup", []):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the launcher (runs as root)

def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox: {what}: {os.strerror(err)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)
    for p in path.rglob("*") if path.is_dir() else []:
        os.chown(p, uid, uid, follow_symlinks=False)


def _enter(spec: dict) -> None:
    uid = UID_BASE + os.getpid()
    libc = _libc()
    for source in spec["rw"].values():
        Path(source).mkdir(parents=True, exist_ok=True)
        _chown_tree(Path(source), uid)
    cwd = Path(spec["cwd"])
    if cwd.is_dir():
        _chown_tree(cwd, uid)
    binds = [(target, source, False) for target, source in spec["rw"].items()]
    binds += [(target, source, True) for target, source in spec["ro"].items() if Path(source).exists()]
    binds.append((str(cwd), str(cwd), False))
    _check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    # Opened in the new namespace (a bind from another namespace's mount fails), before hiding.
    fds = {target: os.open(source, os.O_PATH) for target, source, _ in binds}
    for hidden in sorted(spec["hide"], key=len):
        path = Path(hidden)
        if path.is_dir():
            _mount(libc, "tmpfs", hidden, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777,size=256m")
        elif path.is_file():
            _mount(libc, "/dev/null", hidden, None, _MS_BIND)
    for target, _, read_only in sorted(binds, key=lambda b: len(b[0])):
        fd = fds[target]
        is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
        if is_dir:
            os.makedirs(target, mode=0o755, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            Path(target).touch()
        _mount(libc, f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
        if read_only:
            _mount(libc, None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_REC)
        os.close(fd)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    os.environ.update(spec["env"])
    os.chdir(cwd)


def main(argv: list[str]) -> None:
    spec, cmd = json.loads(argv[0]), argv[1:]
    _enter(spec)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
