"""Two nbgrader preprocessors the course's nbgrader_config.py switches on.

- `StderrIsNotAFailure` (autograde): nbgrader zeroes a graded cell that wrote anything to
  stderr. A warning from a library, or a debugging print of the student's, is not a failed
  check; our checks fail by raising. Runs after execution, before the scores are saved.
- `HideHiddenTests` (generate_feedback): nbgrader copies hidden tests into the feedback it
  gives students, and an assertion's traceback quotes the hidden line. This removes the
  hidden regions and shortens those tracebacks to the check's own message.
"""
from __future__ import annotations

from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor
from nbgrader.utils import is_grade, is_solution


def _is_check(cell) -> bool:
    return cell.cell_type == "code" and is_grade(cell) and not is_solution(cell)


class StderrIsNotAFailure(NbGraderPreprocessor):
    """Graded cells: stderr output becomes stdout, so only a raised error costs points."""

    def preprocess_cell(self, cell, resources, index):
        if _is_check(cell):
            for output in cell.get("outputs", []):
                if output.output_type == "stream" and output.name == "stderr":
                    output.name = "stdout"
        return cell, resources


class HideHiddenTests(ClearHiddenTests):
    """Feedback without hidden tests: their lines go, and a failed hidden check shows only
    `AssertionError: <its message>`, which says what to fix without showing the test."""

    enforce_metadata = False  # feedback cells no longer carry the source's metadata checks

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or self.begin_test_delimeter not in cell.source:
            return cell, resources
        self._remove_hidden_test_region(cell)
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources
