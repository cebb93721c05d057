"""Copy detection in `labkit grade`: every task cell against the same cell of every other
student and against labkit's own answers (labkit/grading/similarity.py). A copy with its
names changed and its lines swapped is flagged, and so is a copy of labkit's loop; honest
work written differently is not."""
import ast
import json
import os
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO
from labkit.grading import classroom, course, similarity
from test_referee import DIFFERENT

SOURCE, RELEASE = REPO / "source" / course.ASSIGNMENT, REPO / "release" / course.ASSIGNMENT

# A loop written by one student...
WRITER = '''\
def greedy_generate(session, prompt_ids, max_new_tokens, stop_ids):
    context = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    answer = []
    for step in range(max_new_tokens):
        mask = np.ones(context.shape, dtype=np.int64)
        scores = session.run(None, {"input_ids": context, "attention_mask": mask})[0]
        choice = int(np.argmax(scores[0][-1]))
        if choice in stop_ids:
            break
        answer.append(choice)
        context = np.hstack([context, np.array([[choice]], dtype=np.int64)])
    return answer
'''
# ...and handed in by another, every name changed and the first two lines swapped.
COPIER = '''\
def greedy_generate(session, prompt_ids, max_new_tokens, stop_ids):
    result = []
    seq = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    for i in range(max_new_tokens):
        m = np.ones(seq.shape, dtype=np.int64)
        out = session.run(None, {"input_ids": seq, "attention_mask": m})[0]
        tok = int(np.argmax(out[0][-1]))
        if tok in stop_ids:
            break
        result.append(tok)
        seq = np.hstack([seq, np.array([[tok]], dtype=np.int64)])
    return result
'''
# labkit.generate's NoCache and the loop of its generate(), pasted into the cell and trimmed
# to what the task needs: names changed, sampling and streaming left out.
LABKIT_COPY = '''\
class Stepper:
    def __init__(self, session):
        self.session = session
        self.names = [i.name for i in session.get_inputs()]

    def start(self, prompt_ids):
        self.ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
        return self.last()

    def step(self, token):
        self.ids = np.concatenate([self.ids, np.array([[token]], np.int64)], axis=1)
        return self.last()

    def last(self):
        feed = {"input_ids": self.ids, "attention_mask": np.ones_like(self.ids)}
        return self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.names})[0][0, -1]


def greedy_generate(session, prompt_ids, max_new_tokens, stop_ids):
    stepper = Stepper(session)
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    reply = []
    logits = stepper.start(prompt) if max_new_tokens > 0 else None
    for _ in range(max_new_tokens):
        token = int(logits.argmax())
        if token in stop_ids:
            break
        reply.append(token)
        if len(reply) < max_new_tokens:
            logits = stepper.step(token)
    return reply
'''
CLASS_04 = {"reference": {}, "different": DIFFERENT["04_chat"], "writer": {"loop": WRITER},
            "copier": {"loop": COPIER}, "labkit_copy": {"loop": LABKIT_COPY}}


@pytest.fixture(scope="module")
def class_04(tmp_path_factory):
    """Notebook 04 handed in by five students, in a course whose assignment is generated."""
    root = course.make_course(tmp_path_factory.mktemp("copies"), notebooks=["04_chat.ipynb"])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    for student, answers in CLASS_04.items():
        course.write_submission(root / "release" / course.ASSIGNMENT / "04_chat.ipynb", SOURCE / "04_chat.ipynb",
                                root / "submitted" / student / course.ASSIGNMENT / "04_chat.ipynb", overrides=answers)
    return root, classroom.find_copies(root)


def test_exactly_the_two_copies_are_flagged(class_04):
    _, notes = class_04
    assert sorted(notes) == ["copier", "labkit_copy", "writer"]
    assert [n for n in notes["copier"] if "student writer in 04_chat/loop" in n] == notes["copier"]
    assert [n for n in notes["writer"] if "student copier in 04_chat/loop" in n] == notes["writer"]
    assert len(notes["labkit_copy"]) == 1 and "similar to labkit (" in notes["labkit_copy"][0]
    assert "labkit.generate.NoCache" in notes["labkit_copy"][0]


def test_the_instructors_page_shows_each_flagged_pair_side_by_side(class_04):
    root, _ = class_04
    page = (root / similarity.REPORT).read_text()
    assert page.count('<table class="pair">') == 2
    assert "copier · writer" in page and "labkit_copy · labkit (" in page
    assert "<mark>" in page and "Content-Security-Policy" in page
    assert "different ·" not in page and "reference ·" not in page


def test_the_summary_carries_the_copies_in_its_integrity_column(tmp_path):
    """grade_class adds find_copies' notes to the referee's: here on a table made by hand, as
    the whole grading run is test_grading_class's."""
    import pandas as pd

    root = course.make_course(tmp_path, notebooks=["04_chat.ipynb"])
    assert course.grading_api(root).generate_assignment(course.ASSIGNMENT)["success"]
    for student, answers in (("writer", {"loop": WRITER}), ("copier", {"loop": COPIER})):
        course.write_submission(root / "release" / course.ASSIGNMENT / "04_chat.ipynb", SOURCE / "04_chat.ipynb",
                                root / "submitted" / student / course.ASSIGNMENT / "04_chat.ipynb", overrides=answers)
    table = pd.DataFrame({"student": ["copier", "writer"], "integrity": ["04_chat: called labkit.x", ""]})
    merged = classroom.with_copies(table, classroom.find_copies(root))
    assert merged["integrity"].tolist()[0].startswith("04_chat: called labkit.x; similar to student writer")
    assert merged["integrity"].tolist()[1].startswith("similar to student copier")
    assert classroom.flagged(merged) == ["copier", "writer"]


# ---------------------------------------------------------------- the threshold's calibration

def _cells(folder, solution: bool) -> dict[str, str]:
    """Each task's cell in `folder`'s notebooks, found as the copy check finds them."""
    layouts = similarity.layouts({p.name: p.read_bytes() for p in RELEASE.glob("*.ipynb")})
    cells = similarity.task_cells({p.name: p.read_bytes() for p in folder.glob("*.ipynb")}, layouts)
    return {task: course.solution_code(code) if solution else code for task, code in cells.items()}


class _Disguise(ast.NodeTransformer):
    """What copying changes cheaply: every local name, the order of a block's first two
    statements, and two lines of one's own at the top of every function (the result need not
    run: only its likeness is measured). Copies so disguised scored 0.81-1.00."""
    KEEP = {"np", "torch", "pd", "self", "super", "transformers", "onnx", "labkit", "DynamicCache"}

    def __init__(self):
        self.names = {}

    def _new(self, name):
        if name in self.KEEP or name in dir(__builtins__):
            return name
        return self.names.setdefault(name, f"my_{name[::-1]}_{len(self.names)}")

    def visit_Name(self, node):
        node.id = self._new(node.id)
        return node

    def visit_arg(self, node):
        node.arg = self._new(node.arg)
        return node

    def generic_visit(self, node):
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and len(body) > 2 and isinstance(body[0], ast.stmt):
            body[0], body[1] = body[1], body[0]
        return node

    def visit_FunctionDef(self, node):
        self.generic_visit(node)
        node.body[:0] = ast.parse("print('checking my work')\nsteps_done = 0").body
        return node


def _disguised(code: str) -> str:
    return ast.unparse(_Disguise().visit(ast.parse(code)))


@pytest.fixture(scope="module")
def assignment_scores():
    """Every task of the assignment: the reference, the different-but-correct submission and
    a disguised copy of the latter, against each other and against labkit."""
    reference, stubs = _cells(SOURCE, True), _cells(RELEASE, False)
    different = dict(reference, **{f"{nb}/{g}": code for nb, cells in DIFFERENT.items() for g, code in cells.items()})
    copy = {task: _disguised(code) for task, code in different.items()}
    matches = similarity.compare_class({"reference": reference, "different": different, "copy": copy}, stubs)
    return reference, different, matches


def test_every_disguised_copy_is_flagged(assignment_scores):
    _, _, matches = assignment_scores
    copies = [m for m in matches if {m.left, m.right} == {"copy", "different"}]
    # Every task whose cell is long enough to differ (the rest are under MIN_CHARS).
    assert sorted(m.task for m in copies) == [
        "01_env/param-count", "02_export/patch", "03_quant/quantize-call", "03_quant/reader", "03_quant/sizes",
        "04_chat/loop", "05_kvcache/kv-wrapper", "05_kvcache/loop", "05_kvcache/summary"]
    assert [(m.task, round(m.score, 2)) for m in copies if m.score < similarity.THRESHOLD] == []


def test_honest_work_written_differently_is_not_flagged(assignment_scores):
    reference, different, matches = assignment_scores
    pairs = [m for m in matches if {m.left, m.right} == {"reference", "different"}
             and reference[m.task] != different[m.task]]
    assert sorted(m.task for m in pairs) == ["03_quant/quantize-call", "03_quant/reader", "04_chat/loop",
                                             "05_kvcache/kv-wrapper", "05_kvcache/loop"]
    assert [(m.task, round(m.score, 2)) for m in pairs if m.score >= similarity.THRESHOLD] == []
    # Against labkit: the one flag is the course's own reference for notebook 05's wrapper,
    # which is labkit's KVWrapper line for line. The different-but-correct one is not flagged.
    against_labkit = [(m.left, m.task) for m in matches if m.from_labkit and m.left != "copy"
                      and m.score >= similarity.THRESHOLD]
    assert against_labkit == [("reference", "05_kvcache/kv-wrapper")]


def test_a_score_is_the_same_in_every_process():
    """copydetect hashes with Python's per-process salted hash; similarity.py replaces it."""
    script = ("import sys; sys.path.insert(0, 'tests'); from labkit.grading import similarity as s; "
              "from test_similarity import WRITER, LABKIT_COPY; "
              "m = s.compare_class({'a': {'04_chat/loop': WRITER}, 'b': {'04_chat/loop': LABKIT_COPY}}, {}); "
              "print([round(x.score, 6) for x in m])")
    runs = {subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed)).stdout for seed in ("1", "2", "3")}
    assert len(runs) == 1 and runs.pop().startswith("[0.")


# ---------------------------------------------------------------- what a student hands in is hostile

def test_a_hostile_notebook_is_skipped_and_its_code_reaches_the_page_escaped(tmp_path):
    """Notebooks that are not notebooks, cells that would stop a parser or the hashing, and a
    copy moved to a new cell with its task cell's flags cleared: the check finishes, the copies
    are found, and what a student wrote reaches the page escaped."""
    def with_loop(code: str, move: bool = False) -> bytes:
        nb = nbformat.read(RELEASE / "04_chat.ipynb", as_version=4)
        index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "loop")
        if move:  # the task cell emptied and unflagged, the code in a cell of its own below it
            nb.cells[index].metadata = {}
            nb.cells.insert(index + 1, nbformat.v4.new_code_cell())
            index += 1
        data = json.loads(nbformat.writes(nb))
        data["cells"][index]["source"] = code  # json.dumps, not nbformat: a lone surrogate stays writable
        return json.dumps(data).encode()

    evil = "</pre><script>alert(1)</script>\n" + WRITER
    class_files = {
        "evil": {"04_chat.ipynb": with_loop(evil)},
        "mover": {"04_chat.ipynb": with_loop(COPIER, move=True)},
        "by_grade_id": {"04_chat.ipynb": json.dumps({"cells": [{"cell_type": "code", "source": COPIER,
                        "metadata": {"nbgrader": {"solution": True, "grade_id": "loop"}}}]}).encode()},
        "garbage": {"04_chat.ipynb": b"\xff not json", "05_kvcache.ipynb": b"[1, 2]", "sub/04_chat.ipynb": b"{}"},
        "deep": {"04_chat.ipynb": b"[" * 200_000 + b"]" * 200_000},
        "odd": {"04_chat.ipynb": json.dumps({"cells": [None, 3, {"metadata": []}, {"id": [1], "cell_type": "code"}]}).encode()},
        "surrogate": {"04_chat.ipynb": with_loop("x = '\ud800'\n" * 40)},
        "nested": {"04_chat.ipynb": with_loop("-" * 19_000 + "1")},  # ast.parse: MemoryError
        "huge": {"04_chat.ipynb": with_loop("x = 1\n" * 10**6)},
    }
    report = tmp_path / similarity.REPORT
    notes = similarity.check_class(sorted(class_files), class_files.get, RELEASE, report)
    assert sorted(notes) == ["by_grade_id", "evil", "mover"]
    assert notes["mover"] == [f"similar to student by_grade_id, student evil in 04_chat/loop (100%): see {similarity.REPORT}"]
    page = report.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
