"""The no-cache export on the tiny Qwen3: contract of the graph, names, parity, patches, bad input."""
import numpy as np
import onnx
import pytest
import torch

from labkit import checks, export, mask_patch, onnx_graph, parity, patches, paths, runtime


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    return export.export_onnx(tiny.model, tmp_path_factory.mktemp("onnx") / "fp32")


def test_graph_contract(exported, tiny):
    io = onnx_graph.graph_io(exported)
    assert io["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]}]
    assert io["outputs"] == [{"name": "logits", "dtype": "float32",
                              "shape": ["batch", "sequence", tiny.model.config.vocab_size]}]
    checks.input_names(exported, export.INPUT_NAMES)
    checks.input_dtypes(exported)
    checks.symbolic_dims(exported)
    checks.logits_output(exported, tiny.model.config.vocab_size)


def tied_embedding_copies(path) -> int:
    """How many initializers have the embedding's shape: 1 when the tie survived export."""
    graph = onnx_graph.load_graph(path).graph
    gather = next(n for n in graph.node if n.op_type == "Gather")
    dims = {t.name: list(t.dims) for t in graph.initializer}
    shape = dims[gather.input[0]]
    return sum(1 for d in dims.values() if d == shape or d == shape[::-1])


def test_one_external_data_file_and_tied_embedding_stored_once(exported, tiny):
    assert sorted(p.name for p in exported.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert tied_embedding_copies(exported) == 1
    # The graph's own protobuf is large next to a toy model's weights, so compare
    # the weights file here; checks.fp32_size runs on the real model in test_grading.
    weights = (exported.parent / "model.onnx.data").stat().st_size
    assert abs(weights / (4 * tiny.params) - 1) < 0.01
    assert not exported.parent.with_name("fp32.partial").exists()


def test_weights_and_nodes_are_named_after_their_modules(exported, tiny):
    graph = onnx_graph.load_graph(exported).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    layers = tiny.model.config.num_hidden_layers
    for i in range(layers):
        for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            torch_weight = tiny.model.get_submodule(f"model.layers.{i}.{module}").weight
            assert weights[f"model.layers.{i}.{module}.weight"] == list(torch_weight.T.shape)
    matmuls = {n.name: n for n in graph.node if n.op_type == "MatMul"}
    node = matmuls[f"model.layers.{layers - 1}.mlp.down_proj/MatMul"]
    assert node.input[1] == f"model.layers.{layers - 1}.mlp.down_proj.weight"
    assert "lm_head/MatMul" in matmuls
    assert [n.name for n in graph.node if n.op_type == "Gather"][0] == "model.embed_tokens/Gather"


def test_readable_names_keep_the_result(exported, tiny):
    """The renamed graph computes exactly what the unrenamed one does (parity < 1e-5)."""
    result = parity.check_parity(tiny.model, runtime.session(exported), tiny.tokenizer, new_tokens=8)
    assert result.ok and result.max_abs_logit_diff < 1e-5


def test_logits_agree_for_shapes_never_traced(exported, tiny):
    session = runtime.session(exported)
    for batch, length, pad in [(1, 1, 0), (3, 17, 0), (2, 40, 9)]:
        ids = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(length))
        mask = torch.ones_like(ids)
        mask[0, :pad] = 0
        with torch.no_grad():
            ref = tiny.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
        out = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert np.abs(out - ref)[mask.numpy().astype(bool)].max() < 1e-5


def test_patch_fixes_the_legacy_exporter_on_the_vmap_mask_path(tmp_path, tiny):
    error = mask_patch.legacy_export(tiny.model, tmp_path / "unpatched.onnx")
    assert error is not None and "unordered_map::at" in error
    assert mask_patch.legacy_export(tiny.model, tmp_path / "patched.onnx",
                                 patch=patches.index_based_attention_mask) is None
    ids, mask = export.example_inputs(tiny.model.config.vocab_size, batch=1, sequence=5)
    with torch.no_grad():
        ref = tiny.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
    out = runtime.session(tmp_path / "patched.onnx").run(
        ["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-5


def test_patches_are_undone_in_reverse_order_also_after_an_error():
    import onnxscript.rewriter as rewriter
    import transformers.masking_utils as masking

    rules, mask = rewriter._DEFAULT_REWRITE_RULES, masking.AttentionMaskInterface._global_mapping["sdpa"]
    with pytest.raises(KeyError):
        with patches.export_patches(patches.index_based_attention_mask):
            assert len(rewriter._DEFAULT_REWRITE_RULES) == len(rules) - 1
            assert masking.AttentionMaskInterface._global_mapping["sdpa"] is not mask
            raise KeyError("a failing export")
    assert rewriter._DEFAULT_REWRITE_RULES is rules
    assert masking.AttentionMaskInterface._global_mapping["sdpa"] is mask


def test_the_mask_patch_observed_and_a_patch_that_forgets_to_restore():
    import contextlib

    import transformers.masking_utils as masking

    checks.mask_patch(mask_patch.observe(patches.index_based_attention_mask))

    @contextlib.contextmanager
    def leaky():
        masking.AttentionMaskInterface._global_mapping["sdpa"] = lambda *a, **k: None
        yield

    seen = mask_patch.observe(leaky)
    assert seen == {"replaced": True, "restored": False, "error_passed": True, "restored_after_error": False}
    with pytest.raises(AssertionError, match="restore it on exit"):
        checks.mask_patch(seen)


def test_export_with_runs_a_students_call_and_refuses_one_that_writes_nothing(tmp_path, tiny):
    def call(wrapper, example, onnx_file):
        export.torch_export(wrapper, example, onnx_file)

    path = export.export_with(call, tiny.model, tmp_path / "ok", wrapper=export.LogitsWrapper(tiny.model))
    checks.one_data_file(path)
    with pytest.raises(export.ExportError, match="wrote no model.onnx"):
        export.export_with(lambda *args: None, tiny.model, tmp_path / "nothing", wrapper=export.LogitsWrapper(tiny.model))
    assert not (tmp_path / "nothing").exists()


def test_unwritable_target_is_refused(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(export.ExportError, match="cannot write to .*a-file"):
        export.export_onnx(tiny.model, blocker / "onnx" / "fp32")


def test_full_disk_is_refused_before_work(monkeypatch, tmp_path, tiny):
    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(export.ExportError, match="not enough disk"):
        export.export_onnx(tiny.model, tmp_path / "fp32")


def test_interrupted_export_keeps_the_previous_model(monkeypatch, exported, tiny):
    before = exported.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_onnx(tiny.model, exported.parent)
    assert exported.read_bytes() == before
    assert not exported.parent.with_name(exported.parent.name + ".partial").exists()


def test_disk_filling_up_mid_write_keeps_the_previous_model(monkeypatch, exported, tiny):
    import errno

    before = exported.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", disk_full)
    with pytest.raises(export.ExportError, match="disk filled up"):
        export.export_onnx(tiny.model, exported.parent)
    assert exported.read_bytes() == before
    assert not exported.parent.with_name(exported.parent.name + ".partial").exists()


def test_missing_external_data_is_named(tmp_path, exported):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(exported.read_bytes())
    with pytest.raises(onnx_graph.BrokenOnnxFile, match="model.onnx.data, which is missing"):
        runtime.session(copy)
    with pytest.raises(onnx_graph.BrokenOnnxFile, match="no ONNX model"):
        onnx_graph.load_graph(tmp_path / "nothing.onnx")
    (tmp_path / "half.onnx").write_bytes(exported.read_bytes()[:1000])
    with pytest.raises(onnx_graph.BrokenOnnxFile, match="not a readable ONNX file"):
        onnx_graph.load_graph(tmp_path / "half.onnx")


def test_checks_fail_with_clear_messages(exported, tiny):
    with pytest.raises(AssertionError, match="expected exactly"):
        checks.input_names(exported, ["input_ids"])
    with pytest.raises(AssertionError, match="0.5 suggests FP16|stored twice"):
        checks.fp32_size(exported, tiny.params * 2)
    bad = parity.Parity(0.5, [False], [[1, 2, 3]], [[1, 2, 4]])
    with pytest.raises(AssertionError, match="differ by up to"):
        checks.logits_close(bad)
    with pytest.raises(AssertionError, match="diverge at position 2"):
        checks.greedy_identical(bad)
