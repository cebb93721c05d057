import json

from labkit import env
from labkit.__main__ import main

CONTRACT_KEYS = {"python", "packages", "cpu_model", "cores", "cpu_flags", "ram_total_gb",
                 "ram_available_gb", "disk_free_gb"}


def test_env_json_contract(tmp_path):
    path = tmp_path / "env.json"
    assert main(["env", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert CONTRACT_KEYS <= report.keys()
    assert isinstance(report["cpu_flags"], list) and report["cores"] >= 1
    assert 0 < report["ram_available_gb"] <= report["ram_total_gb"]
    assert report["packages"]["torch"]["required"] == "==2.13.0"


def test_pinned_packages_are_the_installed_ones():
    rows = env.package_versions()
    assert {"torch", "transformers", "onnx", "onnxruntime", "onnxscript", "nbgrader"} <= rows.keys()
    assert [n for n, r in rows.items() if not r["ok"]] == []


def test_advice_names_each_shortfall():
    report = env.environment_report()
    weak = dict(report, cores=2, ram_total_gb=8.0, disk_free_gb=5.0, cpu_flags=["fma"],
                packages={"torch": {"required": "==2.13.0", "installed": "2.9.1", "ok": False}})
    notes = "\n".join(env.advice(weak))
    for phrase in ("2 cores", "8 GB RAM", "LABKIT_ARTIFACTS", "No AVX2", "torch 2.9.1 (want ==2.13.0)"):
        assert phrase in notes
    strong = dict(weak, cores=8, ram_total_gb=32.0, disk_free_gb=100.0, packages={},
                  cpu_flags=["avx2", "avx512_vnni"])
    assert env.advice(strong) == []
    assert "meets the lab's recommendations" in env.format_report({**strong, "advice": []})


def test_models_command_lists_the_registry(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["smollm2-135m", "qwen3-1.7b", "qwen3-1.7b-random", "qwen3-tiny"]
    assert {"name", "source", "available"} <= rows[0].keys() and rows[0]["available"]


def test_seven_bit_weights_only_where_int8_sums_saturate(monkeypatch):
    from labkit import quantize

    cases = [("x86_64", {"avx2", "fma"}, True), ("x86_64", {"avx2", "avx_vnni"}, False),
             ("x86_64", {"avx512f", "avx512_vnni"}, False), ("aarch64", {"asimd"}, False)]
    for machine, flags, saturates in cases:
        monkeypatch.setattr(env.platform, "machine", lambda: machine)
        monkeypatch.setattr(env, "_cpuinfo", lambda: ("cpu", flags))
        assert env.int8_products_saturate() is saturates, (machine, flags)
        assert quantize.Recipe().weight_type == ("u8" if saturates else "s8")
    assert quantize.NAIVE.weight_type == "s8"  # ONNX Runtime's defaults, as they are
