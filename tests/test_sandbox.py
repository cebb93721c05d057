"""The sandbox a student's kernel and the referee's child run in: what they can and cannot reach.
Grading runs as root (CI does); these tests need it too and fail, not skip, without it."""
import json
import subprocess
import sys
from pathlib import Path

from labkit import paths, sandbox

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
    assert seen["cwd_write"] is True and (cwd / "mine.txt").read_text() == "x"
    assert not (paths.shared_dir() / "poison").exists()


def test_without_isolation_the_command_runs_as_it_is(monkeypatch):
    monkeypatch.setenv(sandbox.NO_SANDBOX_ENV, "1")
    assert sandbox.isolation().startswith("none")
    assert sandbox.command(["python", "x.py"], {}) == ["python", "x.py"]
