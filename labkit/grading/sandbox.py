"""Running a student's code where it cannot reach what it must not: `python -m labkit.grading.sandbox`.

Grading runs two kinds of untrusted process: the student's Jupyter kernel (nbgrader executes
the notebook in it) and the referee's child (`labkit.grading.referee_child`, which re-runs the
student's functions). On Linux as root, each starts through this launcher, which before it
executes the real command:

- makes a new mount namespace and hides, under empty tmpfs mounts, the system temporary
  folders (every other submission's scratch course lives there), /dev/shm and the other
  world-writable folders, the course folder (source notebooks with solutions,
  `gradebook.db`, other students' `submitted/`) and the labkit repository (its `source/`,
  `tests/` and git history), then binds back only what the process needs: a working folder
  of its own where the process thinks it runs (a copy of the regular files there: the real
  folder, where nbgrader writes the graded notebooks as root, is never the student's), its
  artifacts and home (read-write), the Python environment, labkit's package and the shared
  artifacts (read-only);
- makes new network, IPC and PID namespaces: no network interface up (no Dask scheduler, no
  other kernel, no Internet; the kernel talks to nbgrader over Unix sockets, `transport =
  "ipc"`), and every process the student starts dies with the kernel, double-forked or not;
- drops to an unprivileged uid of the submission's own (`uid_for`), with no supplementary
  groups, `no_new_privs`, a cap on its processes and on a file's size, and an environment
  built from an allow-list (`ALLOWED_ENV`): nothing of the grader's, such as the course's
  path, reaches the student.

Root never follows what a student process could have made: a writable folder is one this
grading process created (checked with O_NOFOLLOW, refused if it is anything else), given to
the sandbox uid on its own, never recursively.

Where that is not possible (not root, not Linux) the command runs as it is and
`isolation()` says so; `labkit grade` reports it in the summary.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import zlib
from pathlib import Path

NO_SANDBOX_ENV = "LABKIT_NO_SANDBOX"  # set to 1 to run untrusted code unisolated (debugging only)
HIDE_ENV = "LABKIT_SANDBOX_HIDE"      # more folders to hide, os.pathsep-separated
UID_BASE = 100_000
PACKAGE = Path(__file__).resolve().parents[1]  # labkit/: bound read-only, or its stripped copy
MOUNT_ROOT = "/tmp/.labkit"            # where binds land inside the sandbox (the real /tmp is hidden)

# What a sandboxed process may still have of its parent's environment; the spec's own `env`
# (home, artifacts, threads) is set on top. Everything else, the course's path among it, stays out.
ALLOWED_ENV = frozenset({
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "PYTHONIOENCODING", "PYTHONUNBUFFERED",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "NBGRADER_EXECUTION", "JPY_PARENT_PID", "JPY_SESSION_NAME", "MPLBACKEND", "HF_HUB_OFFLINE",
    "LABKIT_LANG", "LABKIT_THREADS", "LABKIT_MODEL", "LABKIT_QWEN3_DIR"})
# World-writable folders besides /tmp: hidden, so nothing a student leaves there outlives the kernel.
WORLD_WRITABLE = ("/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
MAX_PROCESSES = 512           # threads count too: a kernel with torch and ONNX Runtime uses about 60
MAX_FILE_BYTES = 16 * 2**30   # Qwen3-1.7B's FP32 export is the largest file the lab writes (6.9 GB)
MAX_SEED_BYTES = 256 * 2**20  # what the working folder's copy takes from the real one, in all

_CLONE_NEWNS, _CLONE_NEWNET, _CLONE_NEWPID, _CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
_MS_NOEXEC = 8
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


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
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "source").is_dir() or (repo / ".git").exists() else None


def course_root(folder: Path) -> Path | None:
    """The nbgrader course a folder lies in (autograded/<student>/<assignment>/ -> course)."""
    for parent in [folder, *folder.parents]:
        if (parent / "nbgrader_config.py").is_file():
            return parent
    return None


def uid_for(student: str, referee: bool = False) -> int:
    """The uid of one submission's kernels (or of its referee's child, another): one per
    grading process and student. Files a notebook's kernel wrote are the next kernel's without
    a chown, and two submissions graded at once never share a uid."""
    return UID_BASE + (os.getpid() << 9) + ((zlib.crc32(student.encode()) & 0xFF) << 1) + referee


def _seeded_copy(folder: Path) -> Path:
    """A new folder of this process's with a copy of `folder`'s regular files (no links, no
    devices or FIFOs, `MAX_SEED_BYTES` in all): where the sandboxed process works."""
    work = Path(tempfile.mkdtemp(prefix="labkit-work-"))
    left = MAX_SEED_BYTES
    for parent, dirs, files in os.walk(folder) if folder.is_dir() else ():
        target = work / Path(parent).relative_to(folder)
        target.mkdir(exist_ok=True)
        dirs[:] = [d for d in dirs if stat.S_ISDIR(os.lstat(os.path.join(parent, d)).st_mode)]
        for name in files:
            source = os.path.join(parent, name)
            info = os.lstat(source)
            if stat.S_ISREG(info.st_mode) and info.st_size <= left:
                shutil.copyfile(source, target / name, follow_symlinks=False)
                left -= info.st_size
    return work


def spec_for(cwd: Path, writable: dict[str, Path] | None = None, readable: dict[str, Path] | None = None,
             env: dict[str, str] | None = None, package: Path | None = None, student: str = "",
             referee: bool = False) -> dict:
    """What the launcher needs: `writable`/`readable` map where a folder appears inside (under
    MOUNT_ROOT) to the folder outside (a writable one must be a folder this process made, or
    not exist yet); `env` is set in the process (paths as seen inside); `package` is mounted
    where labkit's package is (the referee's child gets a copy without the answers). The
    process works in a copy of `cwd` (`_seeded_copy`), seen at `cwd`; `cwd` itself is not
    changed."""
    from .. import paths

    writable = dict(writable or {})
    readable = dict(readable or {})
    readable.setdefault(f"{MOUNT_ROOT}/shared", paths.shared_dir())
    work = _seeded_copy(Path(cwd))
    cleanup = [str(work)]
    if f"{MOUNT_ROOT}/home" not in writable:  # a new home for each process, made here
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
    hide = list(dict.fromkeys(["/tmp", tempfile.gettempdir(), *WORLD_WRITABLE]))  # `labkit grade` sets TMPDIR
    repo = repository()
    if repo is not None:
        hide.append(str(repo))
    course = course_root(cwd)
    if course is not None:
        hide.append(str(course))
    hide += [p for p in os.environ.get(HIDE_ENV, "").split(os.pathsep) if p]
    # The Python environment and labkit's package stay where they are (the kernel's argv and the
    # editable install name those paths); binding them onto themselves also makes them read-only.
    keep = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix)} | {str(PACKAGE)}
    readable.update({p: Path(p) for p in keep})
    if package is not None:
        readable[str(PACKAGE)] = Path(package)
    # A kept path under a folder others cannot enter (root's home holds pyenv's Python) is
    # reachable only if that folder is replaced by a tmpfs in which the bind recreates the path.
    hide += [str(parent) for p in keep for parent in Path(p).parents if not os.stat(parent).st_mode & 0o001]
    return {"cwd": str(cwd), "work": str(work), "uid": uid_for(student, referee), "hide": hide, "env": env,
            "cleanup": cleanup, "rw": {k: str(v) for k, v in writable.items()},
            "ro": {k: str(v) for k, v in readable.items()}}


def command(cmd: list[str], spec: dict) -> list[str]:
    """`cmd` wrapped in the launcher where isolation is possible, else `cmd` itself."""
    if isolation() != "sandbox":
        return list(cmd)
    return [sys.executable, "-m", "labkit.grading.sandbox", json.dumps(spec), *cmd]


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


def _own_folder(path: str, uid: int) -> int:
    """An O_PATH descriptor of the folder `path`, created if missing, given to `uid`. Anything
    else there (a symlink a student made in its place, a file, a FIFO) is refused, never
    followed; the folder's contents keep their owners (the submission's earlier processes
    had the same uid)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise OSError(error.errno, f"sandbox: refusing {path}: not a plain folder ({error.strerror})") from None
    try:
        os.fchown(fd, uid, uid)
        return os.open(f"/proc/self/fd/{fd}", os.O_PATH)
    finally:
        os.close(fd)


def _own_file(path: str, uid: int) -> None:
    """Give the grader's own file `path` to `uid`: a regular file, not followed if a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"sandbox: refusing {path}: not a regular file")
        os.fchown(fd, uid, uid)
    finally:
        os.close(fd)


def _enter(spec: dict) -> int:
    """Everything up to the student's command: namespaces, mounts, then a fork, whose child
    (the new PID namespace's first process) drops to the sandbox uid and returns 0; the
    parent returns the child's pid and stays root, outside, to wait for it."""
    uid = spec["uid"]
    libc = _libc()
    cwd = spec["cwd"]
    _check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC), "unshare")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    # Opened in the new namespace (a bind from another namespace's mount fails), before hiding.
    fds = {target: (_own_folder(source, uid), False) for target, source in spec["rw"].items()}
    for path in spec.get("give", []):  # files this grading process wrote for the process (its connection file)
        _own_file(path, uid)
    fds[cwd] = (_own_folder(spec["work"], uid), False)
    fds.update({target: (os.open(source, os.O_PATH), True) for target, source in spec["ro"].items()
                if os.path.exists(source)})
    for hidden in sorted(spec["hide"], key=len):
        if os.path.isdir(hidden) and not os.path.islink(hidden):
            _mount(libc, "tmpfs", hidden, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777,size=256m")
        elif os.path.isfile(hidden):
            _mount(libc, "/dev/null", hidden, None, _MS_BIND)
    for target in sorted(fds, key=len):
        fd, read_only = fds[target]
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, mode=0o755, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            Path(target).touch()
        _mount(libc, f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
        if read_only:
            _mount(libc, None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_REC)
        os.close(fd)
    pid = os.fork()
    if pid:
        return pid
    # A group of its own: a kernel manager signals the launcher's group, and the launcher
    # passes each signal on once (in one group, an interrupt would arrive twice).
    os.setpgid(0, 0)
    # The first process of the new PID namespace: its /proc shows the sandbox's processes only.
    _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent death signal")  # after setuid, which clears it
    for limit, value in ((resource.RLIMIT_NPROC, MAX_PROCESSES), (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    kept = {k: v for k, v in os.environ.items() if k in ALLOWED_ENV or k.startswith("JPY_")}
    os.environ.clear()
    os.environ.update({**kept, **spec["env"]})
    os.chdir(cwd)
    return 0


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _pass_on(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, number)


def _wait(pid: int) -> None:
    """Outside: pass the signals a kernel manager sends on to the sandboxed process, and end
    as it ended. Killed (SIGKILL cannot be passed on), this process takes it along: the
    child's parent-death signal, and its PID namespace with it."""
    for sig in FORWARDED:
        signal.signal(sig, lambda number, _frame: _pass_on(pid, number))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main(argv: list[str]) -> None:
    spec, cmd = json.loads(argv[0]), argv[1:]
    pid = _enter(spec)
    if pid:
        _wait(pid)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
