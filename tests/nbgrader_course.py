"""Reading nbgrader source notebooks and editing submissions the way students do, for tests."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

def graded_points(source_nb: Path, manual: bool = False) -> dict[str, float]:
    """Points per graded cell: the auto-graded code cells (the referee's), or with `manual`
    the written answers (markdown cells) a person grades."""
    nb = nbformat.read(source_nb, as_version=4)
    return {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
            and (c.cell_type == "markdown") == manual}


def solution_lines(source_nb: Path) -> list[str]:
    """Lines that only the solution (and any hidden-test) regions of a source notebook
    contain: the text that must never reach a student."""
    text = "\n".join(c.source for c in nbformat.read(source_nb, as_version=4).cells)
    region = re.compile(r"### BEGIN (?:SOLUTION|HIDDEN TESTS)\n(.*?)### END[^\n]*", re.S)
    public = {line.strip() for line in region.sub("", text).splitlines()}
    return [line.strip() for r in region.findall(text) for line in r.splitlines()
            if len(line.strip()) > 12 and line.strip() not in public]


def edit_cell(path: Path, grade_id: str, *, source: str | None = None, cell_type: str | None = None,
              delete: bool = False) -> None:
    """Change one cell of a submitted notebook the way a student might."""
    nb = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    if delete:
        del nb.cells[index]
    else:
        cell = nb.cells[index]
        if source is not None:
            cell.source = source
        if cell_type == "markdown":
            nb.cells[index] = nbformat.v4.new_markdown_cell(cell.source, id=cell.id, metadata=cell.metadata)
    nbformat.write(nb, path)
