import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_model_choice(monkeypatch):
    """Tests choose models explicitly; a developer's own settings must not leak in."""
    for var in ("LABKIT_MODEL", "LABKIT_QWEN3_DIR", "NBGRADER_EXECUTION", "LABKIT_LANG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def default_model():
    import labkit

    return labkit.load("smollm2-135m")


@pytest.fixture(scope="session")
def tiny():
    import labkit

    return labkit.load("qwen3-tiny")


@pytest.fixture
def closed_port_url():
    """An http URL on loopback where nothing listens: connecting fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny):
    """The tiny Qwen3's no-cache export, shared by the tests that only read it."""
    from labkit import export

    return export.export_onnx(tiny.model, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="session")
def tiny_kv(tmp_path_factory, tiny):
    """The tiny Qwen3's KV-cache export, with its tokenizer and genai_config.json."""
    from labkit import export_kv

    return export_kv.export_kv(tiny.model, tmp_path_factory.mktemp("onnx") / "kv", tiny.tokenizer)
