"""Where generated files go, and one build at a time of each."""
import threading
import time
from types import SimpleNamespace

from labkit import artifacts, paths


def test_students_graphs_and_labkits_own_have_separate_roots(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ARTIFACTS_ENV, str(tmp_path / "mine"))
    monkeypatch.delenv(paths.SHARED_ENV, raising=False)
    assert paths.onnx_dir("m", "kv-int8") == tmp_path / "mine" / "onnx" / "m" / "kv-int8"

    monkeypatch.setenv(paths.SHARED_ENV, str(tmp_path / "shared"))
    for variant in paths.STUDENT_VARIANTS:
        assert paths.onnx_dir("m", variant) == tmp_path / "mine" / "onnx" / "m" / variant
    for variant in ("kv-fp32", "kv-int8", "kv-int4"):
        assert paths.onnx_dir("m", variant) == tmp_path / "shared" / "onnx" / "m" / variant
    assert paths.shared_path("bench", "x.csv").parent.is_dir()


def test_two_that_need_the_same_graph_at_once_build_it_once(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ARTIFACTS_ENV, str(tmp_path))
    built = []

    def slow_build(loaded, variant):
        built.append(variant)
        time.sleep(0.5)
        artifacts.path(loaded, variant).parent.mkdir(parents=True)
        return artifacts.path(loaded, variant)

    monkeypatch.setattr(artifacts, "_build", slow_build)
    monkeypatch.setattr(artifacts, "is_valid", lambda loaded, v: artifacts.path(loaded, v).parent.is_dir())
    loaded = SimpleNamespace(name="m")
    logs = []
    threads = [threading.Thread(target=artifacts.ensure, args=(loaded, "kv-fp32", logs.append)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["kv-fp32"]
    assert sorted(line.split(":")[1].split()[0] for line in logs) == ["building", "reusing"]


def test_a_students_graph_they_did_not_build_is_copied_from_the_referees_build(monkeypatch, tmp_path, tiny):
    """Grading: a submission without its own fp32 and int8 copies the referee's builds (the same
    bytes) instead of exporting and quantizing again in its kernel; int8 is built, not copied,
    once the fp32 beside it is the student's own."""
    from labkit.grading import trust

    monkeypatch.setenv(paths.SHARED_ENV, str(tmp_path / "shared"))
    with trust.trusted_artifacts():
        reference = {v: artifacts.ensure(tiny, v) for v in ("fp32", "int8")}
    assert all(p.is_relative_to(paths.reference_dir()) for p in reference.values())

    monkeypatch.setenv(paths.ARTIFACTS_ENV, str(tmp_path / "mine"))
    built, real_build = [], artifacts._build
    monkeypatch.setattr(artifacts, "_build", lambda loaded, v: built.append(v) or real_build(loaded, v))
    logs = []
    for variant in ("fp32", "int8"):
        mine = artifacts.ensure(tiny, variant, logs.append)
        assert mine.is_relative_to(tmp_path / "mine") and artifacts.is_valid(tiny, variant)
        assert mine.with_name("model.onnx.data").read_bytes() == reference[variant].with_name("model.onnx.data").read_bytes()
    assert built == [] and [line.split(":")[1].split()[0] for line in logs] == ["copying", "copying"]

    fp32 = artifacts.path(tiny, "fp32")
    fp32.write_bytes(fp32.read_bytes())  # the student exports again: their own fp32 now
    assert not artifacts.is_valid(tiny, "int8")
    assert artifacts._reference(tiny, "int8") is None  # ensure builds the lab's recipe on their fp32
    assert artifacts._reference(tiny, "fp32") is not None
