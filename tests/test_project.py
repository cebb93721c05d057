"""The project's own files: one dependency list, CI calling the README's command."""
import re
import tomllib

import yaml
from packaging.requirements import Requirement

from conftest import REPO


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_adds_no_dependency():
    spec = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip = [d for d in spec["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert sorted(re.split(r"[=<> ]", d)[0] for d in conda) == ["pip", "python"]
    declared = {Requirement(d).name.lower() for d in pyproject()["project"]["dependencies"]}
    for line in pip:
        if not line.startswith("-e"):
            assert Requirement(line).name.lower() in declared, f"{line} is not in pyproject.toml"


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    deps = [Requirement(d) for d in pyproject()["project"]["dependencies"]]
    torch = next(d for d in deps if d.name == "torch")
    assert str(torch.specifier) == "==2.13.0"
    assert all(str(d.specifier).startswith("==") for d in deps), "pin every dependency"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"`(make [a-z-]+)`", readme)
    assert "make test" in commands and "make lab" in commands
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_every_labkit_error_has_the_one_base_the_command_line_catches(capsys, monkeypatch):
    """Each module's error says what to do; `python -m labkit` prints any of them in one line.
    Two exceptions are not for that: the referee's stub raises Delegation inside a student's
    code, and ChildGone is a failed verdict (an AssertionError, as nbgrader scores them)."""
    import importlib
    import inspect
    import pkgutil

    import labkit
    from labkit import __main__ as cli
    from labkit.errors import LabkitError

    found = {}
    for info in pkgutil.walk_packages(labkit.__path__, "labkit."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, LabkitError))
    assert outside == ["labkit.grading.child.ChildGone", "labkit.grading.lockdown.Delegation"]
    assert {"labkit.quantize.QuantizeError", "labkit.calibration.ReaderMismatch", "labkit.generate.WrongGraph",
            "labkit.models.ModelUnavailable", "labkit.grading.classroom.GradingSetupError"} <= set(found)
    for name, cls in found.items():
        if not issubclass(cls, LabkitError):
            continue

        def fail(args, cls=cls):
            raise cls("do this instead")

        monkeypatch.setattr(cli, "_env", fail)
        assert cli.main(["env"]) == 1, name
        assert capsys.readouterr().err == "error: do this instead\n", name


def _imports(package) -> dict[str, set[str]]:
    """Every labkit module and the labkit modules it imports, at the top or in a function
    (`from . import x` imports x, not the package)."""
    import ast

    files = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    edges = {name: set() for name in files}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, [base, node.module]))
                found = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in files] or [module]
            else:
                continue
            edges[name] |= {f for f in found if f in files and f != name}
    return edges


def test_the_rooms_depend_one_way_and_no_import_goes_round():
    """labkit/ (what the notebooks import) never imports labkit/grading/ or labkit/bench/; the
    benchmark never imports grading; and no chain of imports, function-level ones included,
    comes back to where it started. The command line (labkit/__main__.py) serves all three."""
    import graphlib

    edges = _imports(REPO / "labkit")
    rooms = {"grading": "labkit.grading", "bench": "labkit.bench"}
    lesson = [m for m in edges if not m.startswith(tuple(rooms.values())) and m != "labkit.__main__"]
    crossing = {m: sorted(t for t in edges[m] if t.startswith(tuple(rooms.values()))) for m in lesson}
    assert {m: t for m, t in crossing.items() if t} == {}
    bench_to_grading = {m: sorted(t for t in edges[m] if t.startswith(rooms["grading"]))
                        for m in edges if m.startswith(rooms["bench"])}
    assert {m: t for m, t in bench_to_grading.items() if t} == {}
    graphlib.TopologicalSorter(edges).prepare()  # CycleError names the modules of a cycle
    assert {"labkit.grading.referee", "labkit.bench.decode_bench", "labkit.chat"} <= set(edges)  # the rooms were read
