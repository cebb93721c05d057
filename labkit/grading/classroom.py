"""Grading a class in parallel: `python -m labkit grade`.

nbgrader autogrades one submission at a time. Here each submission is graded by
`nbgrader autograde` in a scratch course of its own (the course's config, source and a copy
of its gradebook), on Dask workers: a `LocalCluster` of processes by default, or a running
scheduler given by address when a class outgrows one machine. A job carries its files as
bytes, so workers need the same Python environment but no shared disk. The client merges
each result into the course gradebook through nbgrader's `Gradebook` API and writes the
autograded notebooks where `nbgrader generate_feedback` and formgrader look for them.

Each submission writes its graphs to an artifacts folder of its own (`labkit.paths`), so
submissions graded at once on one machine never see each other's files.

Limits per submission: wall time for the whole submission, nbgrader's per-cell timeout
(the kernel is interrupted and the next cells still run), and an address-space limit that
makes a runaway allocation raise MemoryError in the student's cell instead of waking the
kernel's OOM killer.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil

from . import course, sandbox, similarity, trust
from .. import paths
from ..errors import LabkitError


class GradingSetupError(LabkitError, RuntimeError):
    """The course is not ready to grade; the message says what to run."""


@dataclass(frozen=True)
class Limits:
    submission_s: float = 3600.0   # the whole submission; then it is stopped
    cell_s: int = 1200             # one cell (nbgrader's Execute.timeout); then it is interrupted
    memory_gb: float = 16.0        # address space of nbgrader and the student's kernel
    threads: int = 0               # threads per submission; 0 = the machine's cores / workers


@dataclass
class Job:
    """Everything a worker needs to grade one submission, as bytes."""
    assignment: str
    student: str
    config: str
    gradebook: bytes
    source: dict[str, bytes]
    submission: dict[str, bytes]
    limits: Limits
    key: bytes = b""        # the course's referee key: the same draws as `nbgrader autograde` in the course
    course: str = ""        # the course folder, hidden from the student's kernel


@dataclass
class Outcome:
    student: str
    status: str                    # "graded", "timed out", "failed"
    seconds: float
    peak_rss_gb: float
    gradebook: bytes | None = None
    autograded: dict[str, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    log: str = ""


# ---------------------------------------------------------------- course side

MAX_FILE_BYTES = 256 * 2**20  # a file a job carries; a notebook with its outputs is a few MB


def _files(folder: Path) -> dict[str, bytes]:
    """The regular files below `folder` as bytes. Links are not followed and nothing else
    (a FIFO, a device) is opened; a file over MAX_FILE_BYTES is left out."""
    found = {}
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
        for name in sorted(files):
            path = Path(parent, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE_BYTES:
                found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def submitted_students(root: Path, assignment: str) -> list[str]:
    return sorted(p.parent.name for p in (root / "submitted").glob(f"*/{assignment}") if p.is_dir())


def make_jobs(root: Path, assignment: str = course.ASSIGNMENT, students: list[str] | None = None,
              limits: Limits = Limits()) -> list[Job]:
    """One job per submission under `root/submitted/<student>/<assignment>/`."""
    root = Path(root)
    gradebook = root / "gradebook.db"
    if not (root / "nbgrader_config.py").is_file():
        raise GradingSetupError(f"{root} is not a course folder (no nbgrader_config.py)")
    if not gradebook.is_file() or not _assignment_in(gradebook, assignment):
        raise GradingSetupError(
            f"the gradebook in {root} does not know {assignment!r} yet: run "
            f"`nbgrader generate_assignment {assignment}` there first")
    found = submitted_students(root, assignment)
    students = found if students is None else students
    missing = sorted(set(students) - set(found))
    if missing:
        raise GradingSetupError(f"no submission folder submitted/<student>/{assignment}/ for "
                                f"{', '.join(missing)}")
    if not students:
        raise GradingSetupError(f"nothing to grade: {root}/submitted/ has no */{assignment}/ folder")
    shared = paths.shared_dir()
    mode = shared.stat().st_mode & 0o777
    if sandbox.isolation() == "sandbox" and mode & 0o005 != 0o005:
        # Graded kernels run as users of their own: a folder only its owner may enter would
        # turn every submission's graphs into "file not found" and every score into 0.
        raise GradingSetupError(f"the graded kernels, which run as other users, cannot read the shared "
                                f"artifacts in {shared} (mode {mode:o}): run `chmod o+rx {shared}`")
    config, db = (root / "nbgrader_config.py").read_text(), gradebook.read_bytes()
    source = _files(root / "source" / assignment)
    key = trust.course_key(root)
    return [Job(assignment, s, config, db, source, _files(root / "submitted" / s / assignment), limits,
                key, str(root)) for s in students]


def _assignment_in(gradebook: Path, assignment: str) -> bool:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{gradebook}") as gb:
        try:
            gb.find_assignment(assignment)
            return True
        except MissingEntry:
            return False


# ---------------------------------------------------------------- worker side

def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _run_limited(cmd: list[str], cwd: Path, env: dict, limits: Limits) -> tuple[int | None, str, float]:
    """Run `cmd` in its own session under the limits. Returns (exit code or None if it was
    stopped at the wall-time limit, its output, peak RSS of its process tree in bytes)."""
    log = open(cwd / "autograde.log", "w+")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    watched = psutil.Process(proc.pid)
    # Set from outside (preexec_fn is unsafe in a threaded worker); nbgrader starts the
    # kernel seconds later, and the kernel inherits the limit.
    cap = int(limits.memory_gb * 2**30)
    watched.rlimit(psutil.RLIMIT_AS, (cap, cap))
    peak, code = 0, None
    deadline = time.monotonic() + limits.submission_s
    while (code := proc.poll()) is None:
        peak = max(peak, _tree_rss(watched))
        if time.monotonic() > deadline:
            # The kernel runs in a session of its own: kill the whole tree, then the group.
            for child in watched.children(recursive=True):
                child.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.5)
    # The end only: the student's kernel writes to this file too, and could make it any size.
    size = os.fstat(log.fileno()).st_size
    text = os.pread(log.fileno(), LOG_TAIL_BYTES, max(0, size - LOG_TAIL_BYTES)).decode(errors="replace")
    log.close()
    return code, text, peak


LOG_TAIL_BYTES = 2**20


def grade_submission(job: Job) -> Outcome:
    """Autograde one submission in a scratch course; runs on a Dask worker."""
    start = time.monotonic()
    # nbgrader's own temporary folders (the kernel's sockets, the referee child's folders) go
    # in `scratch`, removed after the job even when the job was killed at its time limit:
    # before, each killed submission left four folders in /tmp. Short: a socket path holds
    # at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix=f"labkit-grade-{job.student}-") as tmp, \
            tempfile.TemporaryDirectory(prefix="lkg-") as scratch:
        root = Path(tmp)
        key = root / trust.KEY_FILE
        key.write_bytes(job.key)
        key.chmod(0o600)
        cell_s = int(job.limits.cell_s)
        (root / "nbgrader_config.py").write_text(
            job.config + f"\nc.Execute.timeout = {cell_s}\nc.Referee.cell_timeout = {cell_s}\n")
        (root / "gradebook.db").write_bytes(job.gradebook)
        _forget_earlier_grades(root / "gradebook.db", job.assignment, job.student)
        _write_files(root / "source" / job.assignment, job.source)
        _write_files(root / "submitted" / job.student / job.assignment, job.submission)
        course.venv_bin_on_path()
        threads = job.limits.threads or max(1, os.cpu_count() or 1)
        # The submission's own graphs live and die with its scratch course; what labkit
        # builds the same for everyone is shared by the worker's submissions.
        env = dict(os.environ, LABKIT_THREADS=str(threads), OMP_NUM_THREADS=str(threads), TMPDIR=scratch,
                   **{paths.ARTIFACTS_ENV: str(root / "artifacts"), paths.SHARED_ENV: str(paths.shared_dir()),
                      sandbox.HIDE_ENV: os.pathsep.join(filter(None, [job.course]))})
        code, log, peak = _run_limited(
            [sys.executable, "-m", "nbgrader", "autograde", job.assignment, "--student", job.student,
             "--force"], root, env, job.limits)
        graded = root / "autograded" / job.student / job.assignment
        out = Outcome(
            student=job.student,
            status="graded" if code == 0 else "timed out" if code is None else "failed",
            seconds=time.monotonic() - start, peak_rss_gb=peak / 1e9,
            gradebook=(root / "gradebook.db").read_bytes(),
            autograded=_files(graded) if graded.is_dir() else {}, log=log)
        out.problems = problems(root, job, out)
        out.integrity = integrity(graded)
    return out


def integrity(graded: Path) -> list[str]:
    """What the referee refused or saw, per notebook (from the autograded notebooks), and
    whether the kernels ran isolated."""
    found, isolation = [], set()
    for nb_path in sorted(graded.glob("*.ipynb")):
        meta = nbformat.read(nb_path, as_version=4).metadata.get("labkit_referee", {})
        found += meta.get("integrity", [])
        isolation.add(meta.get("isolation", ""))
    isolation.discard("sandbox")
    isolation.discard("")
    return found + [f"not isolated: {i}" for i in sorted(isolation)]


def _forget_earlier_grades(db: Path, assignment: str, student: str) -> None:
    """A regrade that stops half-way must not leave the last run's scores standing."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{db}") as gb:
        try:
            gb.remove_submission(assignment, student)
        except MissingEntry:
            pass


_NBGRADER_ERROR = re.compile(r"^\[AutogradeApp \| (?:ERROR|CRITICAL)\] (.+)$", re.M)


def problems(root: Path, job: Job, outcome: Outcome) -> list[str]:
    """What went wrong, one line each, for the summary: notebooks that are missing or renamed,
    cells that raised or timed out, the limits that stopped the run, nbgrader's own errors."""
    expected = sorted(Path(n).stem for n in job.source if n.endswith(".ipynb"))
    handed_in = sorted(Path(n).stem for n in job.submission if n.endswith(".ipynb") and "/" not in n)
    found = []
    for name in expected:
        if name not in handed_in:
            others = [h for h in handed_in if h not in expected]
            hint = f" (handed in: {', '.join(o + '.ipynb' for o in others)})" if others else ""
            found.append(f"{name}: not submitted{hint}")
    graded = root / "autograded" / job.student / job.assignment
    for nb_path in sorted(graded.glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    where = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {i + 1}"
                    # Every line: a check's message is Chinese, then English, on lines of its own.
                    message = " / ".join(line.strip() for line in (out.evalue or "").splitlines() if line.strip())
                    found.append(f"{nb_path.stem}:{where}: {out.ename}" + (f": {message[:600]}" if message else ""))
    if outcome.status == "timed out":
        found.append(f"stopped at the {job.limits.submission_s:.0f} s limit for a submission")
    elif outcome.status == "failed":
        errors = _NBGRADER_ERROR.findall(outcome.log)
        found.append("nbgrader: " + (errors[-1] if errors else outcome.log.strip()[-300:]))
    return found


# ---------------------------------------------------------------- merging

def merge(root: Path, assignment: str, outcome: Outcome) -> dict[str, float]:
    """Copy one worker's grades into the course gradebook and its autograded notebooks into
    `root/autograded/`. A notebook the worker could not grade scores 0, as nbgrader scores a
    missing notebook. Returns the submission's `points(...)`."""
    from nbgrader.api import Gradebook

    root = Path(root)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp, \
            Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        # nbgrader builds a new submission's rows in an order SQLAlchemy 2 warns about
        # ("... not in session, add operation ... will not proceed"); the rows are saved all the same
        warnings.filterwarnings("ignore", message=".*not in session.*")
        gb.update_or_create_student(outcome.student)
        worker = _worker_submission(Path(tmp), outcome, assignment)
        timestamp = worker["timestamp"] if worker else None
        kwargs = {"timestamp": timestamp} if timestamp else {}
        submission = gb.update_or_create_submission(assignment, outcome.student, **kwargs)
        for nb in submission.notebooks:
            for grade in nb.grades:
                score = worker["grades"].get((nb.name, grade.name)) if worker else None
                if score is None and outcome.status != "graded":
                    score = 0.0  # never run: nbgrader's rule for a missing notebook
                grade.auto_score = score
                grade.needs_manual_grade = grade.manual_score is not None or score is None
            for comment in nb.comments:
                comment.auto_comment = worker["comments"].get((nb.name, comment.name)) if worker else None
            if worker:
                nb.late_submission_penalty = worker["late"].get(nb.name)
        gb.db.commit()
        result = points(submission)
    target = root / "autograded" / outcome.student / assignment
    shutil.rmtree(target, ignore_errors=True)
    _write_files(target, outcome.autograded)
    return result


def _worker_submission(tmp: Path, outcome: Outcome, assignment: str) -> dict | None:
    from nbgrader.api import Gradebook, MissingEntry

    if not outcome.gradebook:
        return None
    (tmp / "worker.db").write_bytes(outcome.gradebook)
    with Gradebook(f"sqlite:///{tmp / 'worker.db'}") as gb:
        try:
            sub = gb.find_submission(assignment, outcome.student)
        except MissingEntry:
            return None
        return {
            "timestamp": sub.timestamp,
            "grades": {(nb.name, g.name): g.auto_score for nb in sub.notebooks for g in nb.grades},
            "comments": {(nb.name, c.name): c.auto_comment for nb in sub.notebooks for c in nb.comments},
            "late": {nb.name: nb.late_submission_penalty for nb in sub.notebooks},
        }


def points(submission) -> dict[str, float]:
    """An nbgrader submission's score and max score, and their split: the auto-graded code
    cells, and the written answers (markdown cells) still waiting for a person's grade."""
    grades = [g for nb in submission.notebooks for g in nb.grades]
    auto = [g for g in grades if g.cell.cell_type == "code"]
    return {"score": submission.score, "max_score": submission.max_score,
            "auto_score": sum(g.score or 0 for g in auto), "auto_max": sum(g.max_score for g in auto),
            "manual_pending": sum(g.max_score for g in grades if g.cell.cell_type != "code" and g.manual_score is None)}


# ---------------------------------------------------------------- the command

def grade_class(root: Path, assignment: str = course.ASSIGNMENT, students: list[str] | None = None,
                workers: int = 2, scheduler: str | None = None, limits: Limits = Limits(),
                csv: Path | None = None, progress: bool = True):
    """Grade every submission (or `students`) in parallel; returns the summary DataFrame
    (student, score, max_score, auto_score, auto_max, manual_pending, status, seconds, peak_rss_gb,
    problems, integrity) and writes it as CSV (default `root/grading_summary.csv`). The whole
    class is checked for copies (`root/similarity.html`), whoever was graded this time."""
    import pandas as pd
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    root = Path(root).resolve()
    if not limits.threads:
        cores = len(os.sched_getaffinity(0))
        limits = Limits(limits.submission_s, limits.cell_s, limits.memory_gb, max(1, cores // workers))
    jobs = make_jobs(root, assignment, students, limits)
    rows = []
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        # Dask's own memory manager would not see the kernels; our limits do that job.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               memory_limit=0, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(grade_submission, job, key=f"grade-{job.student}", pure=False)
                   for job in jobs]
        bar = tqdm(total=len(futures), desc="grading", unit="submission", disable=not progress)
        for future in as_completed(futures):
            student = future.key.removeprefix("grade-")
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker must not stop the batch
                outcome = Outcome(student, "failed", 0.0, 0.0,
                                  problems=[f"worker: {type(exc).__name__}: {exc}"])
            scored = merge(root, assignment, outcome)
            rows.append(dict(student=outcome.student, **scored, status=outcome.status,
                             seconds=round(outcome.seconds, 1), peak_rss_gb=round(outcome.peak_rss_gb, 2),
                             problems="; ".join(outcome.problems), integrity="; ".join(outcome.integrity)))
            bar.set_postfix_str(f"{outcome.student}: {scored['auto_score']:g}/{scored['auto_max']:g} auto")
            bar.update()
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    table = pd.DataFrame(rows).sort_values("student", ignore_index=True)
    table.to_csv(csv or root / "grading_summary.csv", index=False)  # first: the scores are never lost
    try:
        table = with_copies(table, find_copies(root, assignment))
    except Exception as exc:  # noqa: BLE001 - the copy check is evidence, not grading
        print(f"The copy check failed ({type(exc).__name__}: {exc}): no {similarity.REPORT}; the scores "
              "and the referee's notes stand.", file=sys.stderr)
        return table
    table.to_csv(csv or root / "grading_summary.csv", index=False)
    return table


def with_copies(table, copies: dict[str, list[str]]):
    """The summary with each student's copy notes after the referee's in its integrity column."""
    table = table.copy()
    table["integrity"] = ["; ".join(filter(None, [notes, *copies.get(student, [])]))
                          for student, notes in zip(table["student"], table["integrity"].fillna(""))]
    return table


MAX_NOTEBOOK_BYTES = 20 * 2**20  # a notebook the copy check reads; a graded one with outputs is a few MB


def _notebooks(folder: Path) -> dict[str, bytes]:
    """The regular `*.ipynb` files at the top of `folder`, none followed, none over MAX_NOTEBOOK_BYTES."""
    found = {}
    for path in sorted(folder.glob("*.ipynb")) if folder.is_dir() and not folder.is_symlink() else []:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_NOTEBOOK_BYTES:
            found[path.name] = path.read_bytes()
    return found


def find_copies(root: Path, assignment: str = course.ASSIGNMENT) -> dict[str, list[str]]:
    """Every submission of the class compared task by task with every other and with labkit's
    answers (similarity.py); writes `root/similarity.html` and returns the notes per student."""
    root = Path(root)
    return similarity.check_class(submitted_students(root, assignment),
                                  lambda student: _notebooks(root / "submitted" / student / assignment),
                                  root / "release" / assignment, root / similarity.REPORT)


def flagged(table) -> list[str]:
    """Students whose summary has an integrity note (isolation notes aside)."""
    notes = table["integrity"].fillna("").str.replace(r"(^|; )not isolated: [^;]*", "", regex=True)
    return table.loc[notes.str.strip("; ") != "", "student"].tolist()


def bench_grade(submissions: int = 6, workers: tuple[int, ...] = (1, 2), notebooks: list[str] | None = None,
                json_path: str | Path | None = None) -> list[dict]:
    """Throughput of `labkit grade`: `submissions` copies of the reference solution graded in a
    scratch course with each worker count. `notebooks` limits the assignment (default: all)."""
    import json

    rows = []
    for n in workers:
        with tempfile.TemporaryDirectory(prefix="labkit-bench-grade-") as tmp:
            root = course.make_course(Path(tmp), notebooks=notebooks)
            course.nbgrader(root, "generate_assignment", course.ASSIGNMENT)
            source, release = root / "source" / course.ASSIGNMENT, root / "release" / course.ASSIGNMENT
            for i in range(submissions):
                for nb in sorted(source.glob("*.ipynb")):
                    course.write_submission(release / nb.name, nb,
                                            root / "submitted" / f"student{i:02d}" / course.ASSIGNMENT / nb.name)
            start = time.perf_counter()
            table = grade_class(root, workers=n)
            wall = time.perf_counter() - start
            kept = sum(f.stat().st_size for f in (root / "autograded").rglob("*") if f.is_file())
            gradebook = (root / "gradebook.db").stat().st_size
        row = dict(workers=n, submissions=submissions,
                   kept_mb_per_submission=round(kept / submissions / 1e6, 2), gradebook_mb=round(gradebook / 1e6, 2),
                   notebooks=", ".join(notebooks) if notebooks else "all", wall_s=round(wall, 1),
                   per_hour=round(submissions * 3600 / wall, 1),
                   median_submission_s=round(float(table["seconds"].median()), 1),
                   max_peak_rss_gb=float(table["peak_rss_gb"].max()),
                   all_full_marks=bool((table["auto_score"] == table["auto_max"]).all()))
        print(f"{n} worker(s): {submissions} submissions in {wall:.0f} s = {row['per_hour']} per hour; "
              f"median {row['median_submission_s']} s each, peak {row['max_peak_rss_gb']} GB, "
              f"{row['kept_mb_per_submission']} MB kept per submission (autograded notebooks), gradebook "
              f"{row['gradebook_mb']} MB, full marks: {row['all_full_marks']}", flush=True)
        rows.append(row)
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    return rows
