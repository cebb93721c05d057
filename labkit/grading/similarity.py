"""Copied code: each task cell compared with the same cell of every other student, and with
labkit's own implementation of that task. Evidence for a person, never a score.

The fingerprints are copydetect's (winnowing, as MOSS does; names, strings, comments and
whitespace do not count), with the release's stub as boilerplate. A cell is fingerprinted
twice: as written, and with every block's statements in a canonical order (names
replaced, then sorted), so that reordering independent lines does not hide a copy. A
pair's score is the larger of the two.

Pair of students: the share of the shorter cell found in the other. Student and labkit:
the share of the student's cell found in labkit's functions for that notebook, taken as one
text (a copy may mix two of them), since the kit ships labkit's code (the teaching guide says why) and a copy of it is the cheap way to the points.
"""
from __future__ import annotations

import ast
import hashlib
import html
import importlib
import inspect
import io
import json
import textwrap
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable

import copydetect.utils
import numpy as np
from copydetect import CodeFingerprint, compare_files
from copydetect.utils import filter_code, get_document_fingerprints

from . import verdicts

# copydetect's defaults are 25/30 characters of filtered code (one character per name).
# A task cell is 5 to 30 lines, so shorter k-grams: 12 characters are about one statement
# (`V=V.F(V,V=V)`), and a window of 4 keeps every match of 15 or more. Against 25/30, this
# took a trimmed copy of labkit's loop from 0.48 to 0.71 and honest pairs at most from 0.55
# to 0.56 (tests/test_similarity.py's submissions).
NOISE = 12
GUARANTEE = 15
# Calibrated on the test submissions, every task of notebooks 01-05: copies with names
# changed, lines swapped and two lines added per function scored 0.81-1.00, a trimmed copy of
# labkit's loop 0.71; honest work at most 0.56 (the reference's quantize call against
# labkit's), the reference and the different-but-correct submission at most 0.41 against each
# other. The one honest score above the threshold is the course's own reference for notebook
# 05's wrapper, 0.79: it is labkit's KVWrapper, line for line.
THRESHOLD = 0.65
# A cell whose own code (what the stub's fingerprints do not cover) is shorter than this has
# no room to differ. Notebook 02's export call is one call with the keywords the task names
# (83 characters): the reference and the different-but-correct submission scored 0.73 there.
# 100 characters is about five statements; the cells under it are in docs/teaching-guide.md.
MIN_CHARS = 100

REPORT = "similarity.html"
SHOWN = 200  # pairs shown side by side; the page lists the rest
# A task's first characters only: answers are under 3,000, and a notebook file may be 256 MiB.
MAX_CELL_CHARS = 20_000
MAX_AST_CHARS = 8_000  # the sorted pass parses the code: beyond this, the written pass only


def _stable_kgrams(string: str, k: int) -> np.ndarray:
    """copydetect hashes k-grams with Python's `hash`, salted per process: which k-grams
    winnowing keeps, and so every score, changed from run to run (0.58 and 0.69 for one pair).
    The same k-grams, hashed with BLAKE2b."""
    return np.array([int.from_bytes(hashlib.blake2b(string[i:i + k].encode(), digest_size=8).digest(),
                                    "little", signed=True) for i in range(len(string) - k + 1)], dtype=np.int64)


copydetect.utils.hashed_kgrams = _stable_kgrams  # looked up by get_document_fingerprints at each call


@dataclass(frozen=True)
class Match:
    task: str          # "04_chat/loop"
    left: str          # a student
    right: str         # another student, or "labkit (<the functions that share code>)"
    score: float       # 0..1, see the module's docstring
    left_code: str
    right_code: str
    left_spans: list[tuple[int, int]]   # the shared stretches in left_code, as character offsets
    right_spans: list[tuple[int, int]]
    from_labkit: bool = False           # right is labkit's code, not a student


# ---------------------------------------------------------------- what is compared

@dataclass
class Layout:
    """One release notebook: its task cells by cell id and by grade id, its other cells' ids,
    and each task's stub."""
    tasks_by_id: dict[str, str]
    tasks_by_grade: dict[str, str]
    ids: set[str]
    stubs: dict[str, str]


def _code(cell: dict) -> str:
    source = cell.get("source", "")
    code = "".join(source) if isinstance(source, list) else str(source)
    # A lone surrogate ("\ud800" in the JSON) would stop the hashing and the page.
    return code.encode("utf-8", "replace").decode("utf-8")


def _cells(data: bytes) -> list[dict]:
    try:
        cells = json.loads(data).get("cells", [])
    except Exception:  # noqa: BLE001 - not JSON, nested too deep, not an object: not a notebook
        return []
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def layouts(release: dict[str, bytes]) -> dict[str, Layout]:
    """The release's notebooks (name -> bytes), by notebook stem."""
    found = {}
    for name, data in release.items():
        stem, by_id, by_grade, ids, stubs = name.removesuffix(".ipynb"), {}, {}, set(), {}
        for cell in _cells(data):
            ids.add(cell.get("id"))
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.get("cell_type") == "code" and meta.get("solution"):
                task = f"{stem}/{meta['grade_id']}"
                by_id[cell.get("id")], by_grade[meta["grade_id"]], stubs[task] = task, task, _code(cell)
        found[stem] = Layout(by_id, by_grade, ids, stubs)
    return found


def task_cells(files: dict[str, bytes], release: dict[str, Layout]) -> dict[str, str]:
    """{"<notebook>/<grade_id>": code} for a submission's notebooks (name -> bytes). A task is
    found by its cell's id in the release, else by its grade id; a code cell the student added
    belongs to the task above it, so moving the code to a new cell or clearing the cell's
    nbgrader flags does not take it out of the comparison. What is not a notebook of the
    release is skipped."""
    tasks: dict[str, list[str]] = {}
    for name, data in sorted(files.items()):
        layout = release.get(name.removesuffix(".ipynb"))
        if layout is None:
            continue
        current = None
        for cell in _cells(data):
            meta = cell.get("metadata", {})
            grade = meta.get("nbgrader", {}).get("grade_id") if isinstance(meta, dict) and \
                isinstance(meta.get("nbgrader"), dict) else None
            cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
            task = layout.tasks_by_id.get(cell_id) or (layout.tasks_by_grade.get(grade) if isinstance(grade, str) else None)
            if task:
                current = task
            elif cell_id in layout.ids or cell.get("cell_type") != "code" or current is None:
                continue
            if cell.get("cell_type") == "code":
                tasks.setdefault(current, []).append(_code(cell))
    return {task: "\n".join(parts)[:MAX_CELL_CHARS] for task, parts in tasks.items()}


def references(notebook: str) -> dict[str, str]:
    """labkit's implementations a notebook's tasks may not use, by name, as source code."""
    found = {}
    for name in verdicts.NOTEBOOKS[notebook].forbidden:
        module, _, attribute = name.rpartition(".")
        found[name] = textwrap.dedent(inspect.getsource(getattr(importlib.import_module(module), attribute)))
    return found


# ---------------------------------------------------------------- fingerprints

class _Canonical(ast.NodeTransformer):
    """Names out, then each block's statements sorted: two cells that differ only in names
    and in the order of their statements become the same text."""

    def visit_Name(self, node):
        return ast.copy_location(ast.Name(id="v", ctx=node.ctx), node)

    def visit_arg(self, node):
        node.arg = "v"
        node.annotation = None
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        node.attr = "a"
        return node

    def generic_visit(self, node):
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                block.sort(key=ast.unparse)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            node.name = "f"
        return node


def canonical(code: str) -> str | None:
    """`code` with names replaced and blocks sorted; None when it does not parse. Any failure
    (a syntax error, `ast.parse` running out of memory on 19,000 nested operators) means no
    sorted pass, never a stopped check."""
    if len(code) > MAX_AST_CHARS:
        return None
    try:
        return ast.unparse(_Canonical().visit(ast.parse(code)))
    except Exception:  # noqa: BLE001 - MemoryError and RecursionError included
        return None


def _boilerplate(stub: str) -> list[int]:
    filtered, _ = filter_code(stub, "stub.py", "python")
    hashes, _ = get_document_fingerprints(filtered, NOISE, GUARANTEE - NOISE + 1)
    return list(hashes)


def _fingerprint(code: str, boilerplate: list[int]) -> CodeFingerprint:
    return CodeFingerprint("cell.py", NOISE, GUARANTEE - NOISE + 1, boilerplate=boilerplate,
                           language="python", fp=io.StringIO(code))


@dataclass
class _Stub:
    written: list[int]   # the stub's fingerprints, as written and in the sorted form
    sorted: list[int]

    @classmethod
    def of(cls, stub: str) -> "_Stub":
        return cls(_boilerplate(stub), _boilerplate(canonical(stub) or stub))


@dataclass
class _Cell:
    code: str
    written: CodeFingerprint
    sorted: CodeFingerprint | None
    own_chars: int      # filtered characters covered by fingerprints the stub does not have

    @classmethod
    def of(cls, code: str, stub: _Stub) -> "_Cell":
        written = _fingerprint(code, stub.written)
        normal = canonical(code)
        return cls(code, written, _fingerprint(normal, stub.sorted) if normal is not None else None,
                   int(written.token_coverage))


def _compare(a: _Cell, b: _Cell, side: str) -> tuple[float, list, list]:
    """(score, a's spans, b's spans); side "shorter" for two students, "left" for a student
    and labkit."""
    def score(x, y):
        _, (sx, sy), slices = compare_files(x, y)
        if side == "left":
            return float(sx), slices
        shorter = sx if x.token_coverage <= y.token_coverage else sy
        return float(shorter), slices

    written, slices = score(a.written, b.written)
    best = written
    if a.sorted is not None and b.sorted is not None:
        best = max(best, score(a.sorted, b.sorted)[0])
    spans = [list(zip(map(int, s[0]), map(int, s[1]))) if len(s) and len(s[0]) else [] for s in slices]
    return min(best, 1.0), spans[0], spans[1]


# ---------------------------------------------------------------- the class

def _labkit_document(functions: dict[str, str]) -> tuple[str, list[tuple[str, int, int]]]:
    """labkit's functions for a notebook as one text (a copy may mix two of them), and where
    each one lies in it."""
    text, where = "", []
    for name, code in functions.items():
        start = len(text)
        text += code + "\n\n"
        where.append((name, start, start + len(code)))
    return text, where


def _only_marked(text: str, where, spans) -> tuple[str, list[tuple[int, int]], str]:
    """The functions of labkit's text that hold a shared stretch, their spans moved to
    match, and their names."""
    shown, moved, names = "", [], []
    for name, start, end in where:
        inside = [(max(a, start), min(b, end)) for a, b in spans if a < end and b > start]
        if inside:
            offset = len(shown) - start
            shown += text[start:end] + "\n\n"
            moved += [(a + offset, b + offset) for a, b in inside]
            names.append(name)
    return shown.rstrip(), moved, ", ".join(names)


def compare_class(submissions: dict[str, dict[str, str]], stubs: dict[str, str],
                  labkit_code: dict[str, dict[str, str]] | None = None) -> list[Match]:
    """Every comparison: each pair of students per task, and each student against labkit's
    functions for the task's notebook (`labkit_code`: notebook -> name -> code; default
    `references`). Cells shorter than MIN_CHARS of their own code are left out."""
    labkit_code = {} if labkit_code is None else labkit_code
    documents: dict[str, tuple] = {}
    matches = []
    tasks = sorted({task for cells in submissions.values() for task in cells})
    for task in tasks:
        stub, notebook = _Stub.of(stubs.get(task, "")), task.split("/")[0]
        cells = {student: _Cell.of(cells[task], stub) for student, cells in sorted(submissions.items())
                 if task in cells}
        cells = {s: c for s, c in cells.items() if c.own_chars >= MIN_CHARS}
        for left, right in combinations(sorted(cells), 2):
            score, ls, rs = _compare(cells[left], cells[right], "shorter")
            matches.append(Match(task, left, right, score, cells[left].code, cells[right].code, ls, rs))
        if notebook not in labkit_code and notebook in verdicts.NOTEBOOKS:
            labkit_code[notebook] = references(notebook)
        if not labkit_code.get(notebook):
            continue
        if notebook not in documents:
            text, where = _labkit_document(labkit_code[notebook])
            documents[notebook] = text, where, _Cell.of(text, _Stub([], []))
        text, where, theirs = documents[notebook]
        for student, cell in cells.items():
            score, ls, rs = _compare(cell, theirs, "left")
            # Nothing marked when the score came from the sorted pass: then all of labkit's code.
            shown, spans, names = _only_marked(text, where, rs) if rs else (text.rstrip(), [], "")
            matches.append(Match(task, student, f"labkit ({names or notebook})", score, cell.code, shown, ls, spans,
                                 from_labkit=True))
    return matches


def above_threshold(matches: list[Match], threshold: float = THRESHOLD) -> list[Match]:
    """The matches at or above the threshold, the highest first."""
    return sorted((m for m in matches if m.score >= threshold), key=lambda m: (-m.score, m.task, m.left, m.right))


def notes(found: list[Match]) -> dict[str, list[str]]:
    """The integrity notes per student: one per task, naming at most three others."""
    others: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for m in found:
        pairs = [(m.left, m.right if m.from_labkit else f"student {m.right}")]
        if not m.from_labkit:
            pairs.append((m.right, f"student {m.left}"))
        for student, other in pairs:
            others.setdefault((student, m.task), []).append((m.score, other))
    out: dict[str, list[str]] = {}
    for (student, task), found_here in sorted(others.items()):
        found_here.sort(key=lambda x: (-x[0], x[1]))
        names = ", ".join(o for _, o in found_here[:3]) + (f" and {len(found_here) - 3} more"
                                                            if len(found_here) > 3 else "")
        out.setdefault(student, []).append(f"similar to {names} in {task} ({found_here[0][0]:.0%}): see {REPORT}")
    return out


def check_class(students: list[str], read: Callable[[str], dict[str, bytes]], release: Path, report: Path,
                threshold: float = THRESHOLD) -> dict[str, list[str]]:
    """Compare a class's submissions, write `report` and return the integrity notes per
    student. `read(student)` gives a submission's notebooks (name -> bytes), read one student
    at a time and kept as task cells only; the stubs come from the notebooks in `release`."""
    found = layouts({p.name: p.read_bytes() for p in sorted(Path(release).glob("*.ipynb"))})
    stubs = {task: stub for layout in found.values() for task, stub in layout.stubs.items()}
    matches = compare_class({student: task_cells(read(student), found) for student in students}, stubs)
    write_report(matches, report, threshold)
    return notes(above_threshold(matches, threshold))


# ---------------------------------------------------------------- the instructor's page

def _highlighted(code: str, spans: list[tuple[int, int]]) -> str:
    """`code` as HTML, the shared stretches marked; everything is escaped (it is a student's)."""
    out, at = [], 0
    for start, end in sorted(spans):
        start, end = max(start, at), min(end, len(code))
        if start >= end:
            continue
        out += [html.escape(code[at:start]), "<mark>", html.escape(code[start:end]), "</mark>"]
        at = end
    out.append(html.escape(code[at:]))
    return "".join(out)


PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>相似代码 Similar code</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table.pair {{ width: 100%; table-layout: fixed; border-collapse: collapse; margin-bottom: 2em; }}
table.pair td {{ vertical-align: top; border: 1px solid #ccc; padding: .5em; }}
pre {{ white-space: pre-wrap; font-size: 85%; }}
mark {{ background: #ffd27f; }}
</style></head><body>
<h1>相似代码 Similar code</h1>
<p>每个作业单元格与同一单元格的其他学生代码、以及 labkit 中该题的实现比较（winnowing 指纹，不计变量名、注释、空白和语句顺序）。
分数达到 {threshold:.0%} 的配对列在下面：这是供人判断的证据，不是自动判零。<br>
Each task cell compared with every other student's same cell and with labkit's implementation of that task
(winnowing fingerprints; names, comments, whitespace and statement order do not count). Pairs at
{threshold:.0%} or above are listed: evidence for a person to weigh, not an automatic zero.</p>
<p>{summary}</p>
{pairs}
</body></html>
"""


def write_report(matches: list[Match], path: Path, threshold: float = THRESHOLD) -> Path:
    found = above_threshold(matches, threshold)
    below = max((m.score for m in matches if m.score < threshold), default=0.0)
    summary = (f"{len(matches)} comparisons, {len(found)} at or above the threshold; the highest below it "
               f"scored {below:.0%}.")
    pairs = []
    for m in found[:SHOWN]:
        pairs.append(
            f"<h2>{html.escape(m.task)}: {html.escape(m.left)} · {html.escape(m.right)} — {m.score:.0%}</h2>\n"
            f'<table class="pair"><tr><th>{html.escape(m.left)}</th><th>{html.escape(m.right)}</th></tr>\n'
            f"<tr><td><pre>{_highlighted(m.left_code, m.left_spans)}</pre></td>"
            f"<td><pre>{_highlighted(m.right_code, m.right_spans)}</pre></td></tr></table>")
    if len(found) > SHOWN:  # a class that copied one source: the rest as a list, not 10,000 tables
        rows = "".join(f"<tr><td>{html.escape(m.task)}</td><td>{html.escape(m.left)}</td><td>{html.escape(m.right)}</td>"
                       f"<td>{m.score:.0%}</td></tr>" for m in found[SHOWN:])
        pairs.append(f"<h2>其余 The rest ({len(found) - SHOWN})</h2><table><tr><th>task</th><th></th><th></th>"
                     f"<th>score</th></tr>{rows}</table>")
    path.write_text(PAGE.format(threshold=threshold, summary=html.escape(summary),
                                pairs="\n".join(pairs) or "<p>无 None.</p>"), encoding="utf-8")
    return path
