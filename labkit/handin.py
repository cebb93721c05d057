"""`python -m labkit handin <student id>`: the five notebooks in one zip to upload.

The archive holds `<id>/<notebook>.ipynb`, the layout the instructor's `nbgrader
zip_collect` reads (docs/teaching-guide.md). A notebook that is not valid JSON stops the
hand-in; one with tasks still unsolved is handed in with a warning."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import nbformat

from .errors import LabkitError

NOTEBOOKS = ["01_env.ipynb", "02_export.ipynb", "03_quant.ipynb", "04_chat.ipynb", "05_kvcache.ipynb"]
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class HandinError(LabkitError, ValueError):
    pass


def unsolved(notebook) -> list[str]:
    """The grade ids of solution cells that still raise NotImplementedError."""
    return [c.metadata["nbgrader"].get("grade_id", "?") for c in notebook.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")
            and "raise NotImplementedError()" in c.source]


def handin(student_id: str, notebooks: Path = Path("notebooks"), out: Path = Path("handin")) -> Path:
    if not STUDENT_ID.match(student_id or ""):
        raise HandinError(f"学号只能用字母、数字、- 和 _ / a student id is letters, digits, - and _: got "
                          f"{student_id!r} (make handin ID=2024123456)")
    missing = [name for name in NOTEBOOKS if not (notebooks / name).is_file()]
    if missing:
        raise HandinError(f"{notebooks} 里缺少 / is missing {', '.join(missing)}: keep the names the kit gave them")
    for name in NOTEBOOKS:
        try:
            left = unsolved(nbformat.read(notebooks / name, as_version=4))
        except Exception as exc:  # noqa: BLE001 - any unreadable notebook stops the hand-in
            raise HandinError(f"{name} 无法读取 / cannot be read ({exc}): open it in JupyterLab and save it again")
        if left:
            print(f"注意 Note: {name} 还有未完成的任务 has tasks left: {', '.join(left)}")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{student_id}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in NOTEBOOKS:
            zf.write(notebooks / name, f"{student_id}/{name}")
    print(f"已写出 Wrote {archive}: 按课程要求上传 / upload it as the course says")
    return archive
