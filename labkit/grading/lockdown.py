"""labkit without its answers, for the referee's child.

`strip(...)` writes a copy of the labkit package in which every function that is a task's
answer (and every method of such a class) keeps its signature but has lost its body: calling
it raises `Delegation` and records the name in `HITS`. The child imports this copy, so a
call through any name — the module attribute, an alias, `getattr`, `importlib.reload`, or
another labkit function that calls it — reaches no reference code, because there is none in
the process to reach. In the sandbox the copy is mounted where labkit lives, so the original
files cannot be read either.

Without the sandbox (grading as a user that cannot isolate), the original package is still
on disk; `guard(...)` adds an audit hook (Python offers no way to remove one) that refuses
to open, compile or execute it. That is a fence, not a wall: code with raw memory access
(ctypes, numpy's array interface) can get past an in-process hook. The README says so.

What neither can see: code copied by hand from labkit's source into the notebook.
"""
from __future__ import annotations

import ast
import os
import shutil
import sys
import types
from pathlib import Path

from ..messages import say

PACKAGE = Path(__file__).resolve().parents[1]  # labkit/, the whole package
HITS: list[str] = []  # the answers reached, in order (the child reports them with each reply)


class Delegation(Exception):
    """A student's code called a labkit function that is a task's answer."""

    def __init__(self, name: str):
        super().__init__(f"{name} is one of labkit's reference answers, switched off while grading: write it "
                         f"yourself ({name} 是 labkit 的参考答案，评分时不可用，请自己实现)")
        self.name = name


def delegation(name: str) -> Delegation:
    HITS.append(name)
    return Delegation(name)


def _stub(node: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> None:
    call = ast.parse(f"raise __import__('labkit.grading.lockdown', fromlist=['x']).delegation({name!r})").body
    node.body = call
    node.decorator_list = [d for d in node.decorator_list
                           if isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod", "property")]


def _strip_module(source: str, targets: dict[str, str]) -> str:
    """`targets`: a name in the module ('generate', 'NoCache', 'Chat._render') -> its qualname."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in targets:
            _stub(node, targets[node.name])
        elif isinstance(node, ast.ClassDef):
            whole = targets.get(node.name)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    method = targets.get(f"{node.name}.{item.name}")
                    if whole or method:
                        _stub(item, method or (whole if item.name == "__init__" else f"{whole}.{item.name}"))
    return ast.unparse(tree)


def strip(forbidden: list[str], out: Path) -> Path:
    """Write labkit without `forbidden` (qualnames like 'labkit.generate.NoCache') to
    `out/labkit`; return that folder."""
    target = Path(out) / "labkit"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    by_module: dict[str, dict[str, str]] = {}
    for qualname in forbidden:
        parts = qualname.split(".")
        # the module is the longest dotted prefix that is a file: labkit.bench.decode_bench._ort_runner
        module = next((parts[1:i] for i in range(len(parts) - 1, 1, -1)
                       if PACKAGE.joinpath(*parts[1:i]).with_suffix(".py").is_file()), None)
        if module is None:
            raise ValueError(f"{qualname}: no such module in labkit")
        by_module.setdefault("/".join(module), {})[".".join(parts[1 + len(module):])] = qualname
    for module, targets in by_module.items():
        path = target / f"{module}.py"
        stripped = _strip_module(path.read_text(), targets)
        missing = [t for t in targets if t.split(".")[0] not in stripped]
        if missing:
            raise ValueError(f"labkit.{module.replace('/', '.')} defines no {missing}")
        path.write_text(stripped)
    return target


def _under(path, folder: str) -> bool:
    if isinstance(path, int):
        return False
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(folder + os.sep)
    except (TypeError, ValueError):
        return False


def guard(original: Path) -> None:
    """Refuse to open, compile or run anything from the original package `original`."""
    folder = str(Path(original).resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open" and _under(args[0], folder):
            raise PermissionError(say("lockdown.read", path=args[0]))
        if event == "exec" and isinstance(args[0], types.CodeType) and _under(args[0].co_filename, folder):
            raise PermissionError(say("lockdown.run"))
        if event == "compile" and len(args) > 1 and args[1] is not None and _under(args[1], folder):
            raise PermissionError(say("lockdown.compile"))

    sys.addaudithook(hook)
