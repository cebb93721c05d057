"""The sandbox a student's kernel and the referee's child run in: what they can and cannot reach.
Grading runs as root (CI does); these tests need it too and fail, not skip, without it."""
import json
import subprocess
import sys
from pathlib import Path

from labkit import paths

from labkit.grading import sandbox

PROBE = """\
import glob, json, os, socket, sys  # noqa: E401
def readable(path):
    try:
        with open(path, 'rb') as f:
            return f.read(1) is not None
    except OSError:
        return False
def writes(path):
    try:
        with open(path, 'w') as f:
            f.write('x')
        return True
    except OSError:
        return False
def connects():
    try:
        socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).close()
        return True
    except OSError:
        return False
print(json.dumps({
    'uid': os.getuid(),
    'secret': readable(sys.argv[2]),
    'other': [os.path.join(d, f) for d, _, files in os.walk(sys.argv[3]) for f in files],
    'repo_source': glob.glob(sys.argv[4] + '/source/**/*.ipynb', recursive=True),
    'labkit': readable(sys.argv[5]),
    'shared_write': writes(os.environ['LABKIT_SHARED_ARTIFACTS'] + '/poison'),
    'cwd_write': writes('mine.txt'),
    'network': connects(),
}))
"""


def _run_probe(tmp_path, course):
    import socket

    cwd = course / "autograded" / "alice" / "llm_lab"
    cwd.mkdir(parents=True)
    (cwd / "probe.py").write_text(PROBE)
    other = tmp_path / "labkit-grade-bob"
    (other / "submitted" / "bob").mkdir(parents=True)
    (other / "submitted" / "bob" / "answer.txt").write_text("bob's answer")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        spec = sandbox.spec_for(cwd)
        try:
            cmd = sandbox.command([sys.executable, "probe.py", str(server.getsockname()[1]),
                                  str(course / "gradebook.db"), str(other), str(sandbox.repository()),
                                  str(Path(sandbox.__file__))], spec)
            out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
        finally:
            sandbox.cleanup(spec)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), cwd


def test_untrusted_code_reaches_nothing_of_the_course_and_writes_only_its_folder(tmp_path):
    assert sandbox.isolation() == "sandbox", "grading isolates student code only as root on Linux"
    course = tmp_path / "course"
    course.mkdir()
    (course / "nbgrader_config.py").write_text("")
    (course / "gradebook.db").write_text("hidden tests and every student's grades")
    seen, cwd = _run_probe(tmp_path, course)
    assert seen["uid"] >= sandbox.UID_BASE
    assert seen["secret"] is False                     # the course's gradebook
    assert seen["other"] == []                         # another submission's scratch course
    assert seen["repo_source"] == []                   # the instructor's source notebooks
    assert seen["labkit"] is True                      # labkit's package stays importable
    assert seen["shared_write"] is False               # shared artifacts are read-only
    assert seen["network"] is False                    # not even loopback (the Dask scheduler)
    assert seen["cwd_write"] is True and not (cwd / "mine.txt").exists()  # written in its own copy
    assert not (paths.shared_dir() / "poison").exists()


def test_without_isolation_the_command_runs_as_it_is(monkeypatch):
    monkeypatch.setenv(sandbox.NO_SANDBOX_ENV, "1")
    assert sandbox.isolation().startswith("none")
    assert sandbox.command(["python", "x.py"], {}) == ["python", "x.py"]


HOSTILE = """\
import errno, json, os, sys, time  # noqa: E401
course, artifacts = sys.argv[1], os.environ['LABKIT_ARTIFACTS']
found = {'env_names_course': sorted(k for k, v in os.environ.items() if course in v or 'SANDBOX' in k),
         'processes': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
         'limits': [__import__('resource').getrlimit(r)[0] for r in (6, 1)]}  # RLIMIT_NPROC, RLIMIT_FSIZE
os.symlink(course, os.path.join(artifacts, '.home'))                  # root followed this as the next home
os.symlink(course + '/gradebook.db', '03_quant.ipynb')                # nbgrader wrote through these as root
os.symlink(course + '/.labkit-referee-key', '04_chat.ipynb')
os.mkfifo('05_kvcache.ipynb')
try:
    with open(os.path.join(artifacts, 'huge'), 'wb') as f:
        f.truncate(4 * 2**40)                                          # a sparse 4 TB file
    found['huge'] = 'made'
except OSError as error:
    found['huge'] = errno.errorcode[error.errno]
for folder in ('/var/tmp', '/dev/shm', '/run/lock'):
    try:
        open(os.path.join(folder, 'labkit-hostile'), 'w').close()
    except OSError:
        pass
if os.fork() == 0:                                                     # a process that would outlive the kernel
    os.setsid()
    if os.fork() == 0:
        for _ in range(600):
            open(os.path.join(artifacts, 'alive'), 'w').write(str(time.time()))
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.5)
print(json.dumps(found))
"""

LOOK = """\
import json, os, sys  # noqa: E401
home = os.environ['HOME']
def reads(path):
    try:
        return open(path, 'rb').read(8)
    except OSError:
        return None
print(json.dumps({'home': sorted(os.listdir(home)), 'key': reads(sys.argv[1] + '/.labkit-referee-key') is not None,
                  'gradebook': reads(sys.argv[1] + '/gradebook.db') is not None, 'uid': os.getuid()}))
"""


def _snapshot(folder: Path) -> dict:
    """Every file's owner, mode and bytes below `folder` (links not followed)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        out[str(path)] = (info.st_uid, info.st_gid, info.st_mode, path.read_bytes() if path.is_file() else None)
    return out


def test_a_hostile_kernel_leaves_nothing_root_would_follow_and_nothing_running(tmp_path, monkeypatch):
    """Issue 39's escapes, at the sandbox: a kernel plants a link to the course where its home
    was, links and a FIFO named like the next notebooks in its working folder, a sparse 4 TB
    file, files in the world-writable folders and a double-forked process. The course keeps
    every byte and owner, the real working folder gets none of it, nothing keeps running, and
    the submission's next kernel (same uid, new home) sees nothing of the course."""
    import psutil

    from labkit.grading import nbgrader_plugins

    course = tmp_path / "course"
    cwd = course / "autograded" / "mallory" / "llm_lab"
    cwd.mkdir(parents=True)
    (course / "nbgrader_config.py").write_text("")
    (course / "gradebook.db").write_bytes(b"every student's grades")
    (course / ".labkit-referee-key").write_bytes(b"k" * 64)
    (cwd / "01_env.ipynb").write_text("{}")
    (cwd / "hostile.py").write_text(HOSTILE)
    (cwd / "look.py").write_text(LOOK)
    artifacts = tmp_path / "scratch" / "artifacts"
    artifacts.parent.mkdir(mode=0o700)
    monkeypatch.setenv("LABKIT_ARTIFACTS", str(artifacts))
    monkeypatch.setenv(sandbox.HIDE_ENV, str(course))  # as `labkit grade` sets it for the launcher
    before = _snapshot(course)

    def run(script, sockets):
        spec = nbgrader_plugins.kernel_spec(cwd, sockets)
        try:
            out = subprocess.run(sandbox.command([sys.executable, script, str(course)], spec), cwd=cwd,
                                 capture_output=True, text=True, timeout=120)
        finally:
            sandbox.cleanup(spec)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1]), spec["uid"]

    seen, uid = run("hostile.py", tmp_path / "s1")
    assert seen["env_names_course"] == []                          # no grader's path, no sandbox setting
    assert seen["processes"] == [1]                                # its own PID namespace
    assert seen["limits"] == [sandbox.MAX_PROCESSES, sandbox.MAX_FILE_BYTES]
    assert seen["huge"] == "EFBIG"
    assert not any(p.info["uids"] and p.info["uids"].real == uid for p in psutil.process_iter(["uids"]))
    alive = (artifacts / "alive").read_text()
    import time
    time.sleep(0.5)
    assert (artifacts / "alive").read_text() == alive               # the double-forked writer is gone
    assert sorted(p.name for p in cwd.iterdir()) == ["01_env.ipynb", "hostile.py", "look.py"]
    assert not any(Path(f, "labkit-hostile").exists() for f in ("/var/tmp", "/dev/shm", "/run/lock"))
    assert (artifacts / ".home").is_symlink() and _snapshot(course) == before

    looked, next_uid = run("look.py", tmp_path / "s2")
    assert next_uid == uid and looked["uid"] == uid                # files of the earlier kernel stay its own
    assert looked["home"] == [] and not looked["key"] and not looked["gradebook"]
    assert _snapshot(course) == before


def test_the_launcher_refuses_a_writable_folder_that_is_a_link(tmp_path):
    """Root hands a folder to the sandbox uid only if it is a plain folder: a link in its
    place (which a student process may have made) stops the launch, and nothing is chowned."""
    course = tmp_path / "course"
    course.mkdir()
    (course / "gradebook.db").write_bytes(b"grades")
    link = tmp_path / "home"
    link.symlink_to(course)
    spec = sandbox.spec_for(tmp_path, writable={f"{sandbox.MOUNT_ROOT}/home": link})
    try:
        out = subprocess.run(sandbox.command([sys.executable, "-c", "print('ran')"], spec), capture_output=True,
                             text=True, timeout=60)
    finally:
        sandbox.cleanup(spec)
    assert out.returncode != 0 and "ran" not in out.stdout and "refusing" in out.stderr
    assert course.stat().st_uid == 0 and (course / "gradebook.db").stat().st_uid == 0
