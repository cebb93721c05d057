import copy
import json

import pytest
import torch

import labkit
from labkit import gguf_convert, hub, models


def test_selection_order(monkeypatch):
    assert models.resolve_name() == models.DEFAULT_MODEL
    monkeypatch.setenv("LABKIT_MODEL", "qwen3-tiny")
    assert models.resolve_name() == "qwen3-tiny"
    assert models.resolve_name("qwen3-1.7b-random") == "qwen3-1.7b-random"  # argument beats env


def test_grading_forces_the_default(monkeypatch):
    monkeypatch.setenv("LABKIT_MODEL", "qwen3-1.7b")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert models.resolve_name() == models.DEFAULT_MODEL
    assert models.resolve_name("qwen3-1.7b-random") == models.DEFAULT_MODEL


def test_demonstrations_are_skipped_only_under_autograde(monkeypatch, capsys):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not labkit.autograding() and labkit.demonstration("the table") and capsys.readouterr().out == ""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert labkit.autograding() and not labkit.demonstration("the table")
    assert capsys.readouterr().out == "（演示「the table」：nbgrader 自动评分时不运行，这一格不计分） " \
                                      "(the table: not run under nbgrader autograde, where it grades nothing)\n"


def test_unknown_name_lists_the_registry():
    with pytest.raises(models.ModelUnavailable) as err:
        models.resolve_name("gpt-5")
    for name in models.REGISTRY:
        assert name in str(err.value)


def test_default_model_is_a_real_instruct_model(default_model):
    tok, model = default_model.tokenizer, default_model.model
    assert model.dtype == torch.float32
    assert model.config.tie_word_embeddings and not hasattr(model.config, "quantization_config")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(ids["input_ids"], max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_conversion_is_cached_and_checked(default_model):
    folder = models.default_model_folder()
    assert gguf_convert.is_converted(folder)
    assert (folder / "chat_template.jinja").is_file() or "chat_template" in (
        folder / "tokenizer_config.json").read_text()
    hub.verify_model_folder(folder)
    stamp = json.loads((folder / gguf_convert.MARKER).read_text())
    assert stamp["gguf_bytes"] == gguf_convert.bundled_gguf().stat().st_size


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(gguf_convert.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gguf_convert.BundledModelMissing, match="python -m labkit install-model"):
        gguf_convert.bundled_gguf()
    assert not models.availability("smollm2-135m")[0]


def test_tiny_qwen3_is_seeded_and_small(tiny):
    again = labkit.load("qwen3-tiny")
    assert tiny.model.config.model_type == "qwen3"
    assert tiny.params * 4 < 10 * 2**20  # "a few MB"
    for a, b in zip(tiny.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.randn(1).shape == (1,)  # the global RNG still works after seeding


def test_random_qwen3_has_the_published_shape():
    config = labkit.load_config("qwen3-1.7b-random")
    # Qwen/Qwen3-1.7B config.json
    published = dict(num_hidden_layers=28, hidden_size=2048, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     intermediate_size=6144, tie_word_embeddings=True)
    assert {k: getattr(config, k) for k in published} == published
    tok = labkit.load_tokenizer("qwen3-1.7b-random")
    assert config.eos_token_id == tok.eos_token_id < config.vocab_size


@pytest.fixture
def bf16_qwen3_folder(tmp_path, tiny):
    """A Qwen3 checkpoint stored in bf16, like the real one."""
    folder = tmp_path / "Qwen3-1.7B"
    copy.deepcopy(tiny.model).to(torch.bfloat16).save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def test_local_qwen3_folder_loads_as_float32(monkeypatch, bf16_qwen3_folder):
    assert json.loads((bf16_qwen3_folder / "config.json").read_text())["dtype"] == "bfloat16"
    monkeypatch.setenv("LABKIT_QWEN3_DIR", str(bf16_qwen3_folder))
    assert models.availability("qwen3-1.7b") == (True, str(bf16_qwen3_folder))
    loaded = labkit.load("qwen3-1.7b")
    assert loaded.model.dtype == torch.float32 and loaded.origin == str(bf16_qwen3_folder)
    assert labkit.load(str(bf16_qwen3_folder)).model.dtype == torch.float32


def test_truncated_shard_is_named(bf16_qwen3_folder):
    shard = bf16_qwen3_folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(hub.IncompleteModelFolder, match="model.safetensors has .* bytes, expected"):
        hub.verify_model_folder(bf16_qwen3_folder)


def test_missing_shard_is_named(bf16_qwen3_folder):
    (bf16_qwen3_folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(hub.IncompleteModelFolder, match="missing weight file model-00002-of-00002"):
        hub.verify_model_folder(bf16_qwen3_folder)


def test_unavailable_qwen3_names_three_ways(monkeypatch, tmp_path, closed_port_url):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url)
    with pytest.raises(models.ModelUnavailable) as err:
        labkit.load("qwen3-1.7b")
    text = str(err.value)
    assert "qwen3-1.7b" in text and "cannot reach" in text
    for way in ("LABKIT_QWEN3_DIR", "python -m labkit download qwen3-1.7b", "LABKIT_MODEL=smollm2-135m"):
        assert way in text


def test_offline_flag_is_respected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable_reason() == "HF_HUB_OFFLINE is set"


def test_param_count_counts_tied_embedding_once(tiny):
    assert labkit.param_count(tiny.model.config) == tiny.params
    untied = models.qwen3_config(dict(models.QWEN3_TINY_SHAPE, tie_word_embeddings=False))
    cfg = tiny.model.config
    assert labkit.param_count(untied) - tiny.params == cfg.vocab_size * cfg.hidden_size
