"""PyTorch -> ONNX for the graph without a KV cache (notebook 02).

The exporter is `torch.onnx.export(..., dynamo=True)`: torch.export traces the
model into an FX graph with symbolic shapes, which is translated to ONNX and
optimized by onnxscript. What the lab adds around it:

- `LogitsWrapper`: plain tensors in and out, so the exporter never sees a
  transformers output object or a cache;
- `export_patches`: the monkey patches the exporter needs (see patches.py);
- `export_with`: everything around the `torch.onnx.export` call, which the student writes;
- `readable_names`: renames nodes and weights after the module they come from;
- a write that cannot leave a half-written model where the next notebook looks.
"""
from __future__ import annotations

import ast
import contextlib
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from tqdm.auto import tqdm

from .errors import LabkitError
from .patches import export_patches
from .paths import MODEL_FILE, check_writable, staged_dir

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["logits"]
SCOPES = "pkg.torch.onnx.name_scopes"


class ExportError(LabkitError, RuntimeError):
    pass


class LogitsWrapper(torch.nn.Module):
    """input_ids, attention_mask (int64, [batch, sequence]) -> logits (float32,
    [batch, sequence, vocab]). No cache: every call sees the whole sequence."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def dynamic_shapes() -> tuple[dict, dict]:
    """Batch and sequence are symbolic in both inputs (they share the same Dims)."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return {0: batch, 1: sequence}, {0: batch, 1: sequence}


def example_inputs(vocab_size: int, batch: int = 2, sequence: int = 8) -> tuple[torch.Tensor, ...]:
    """Tracing inputs. Batch and sequence above 1 keep torch.export from
    specialising a dimension of size 1 into a constant."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (batch, sequence), generator=generator)
    return input_ids, torch.ones_like(input_ids)


# --- readable names ------------------------------------------------------------------

def _module_path(node: onnx.NodeProto, prefix: str) -> str:
    """The innermost module a node came from, relative to the wrapped model."""
    props = {p.key: p.value for p in node.metadata_props}
    if SCOPES not in props:
        return ""
    scopes = ast.literal_eval(props[SCOPES])  # ['', 'model', 'model.model', ..., fx node name]
    path = scopes[-2] if len(scopes) >= 2 else ""
    return path[len(prefix):] if path.startswith(prefix) else path


def _wrapper_prefix(graph: onnx.GraphProto) -> str:
    """The wrapper's attribute holding the model ('model.'), found in the scopes."""
    for node in graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if SCOPES in props:
            scopes = ast.literal_eval(props[SCOPES])
            if len(scopes) > 2:
                return scopes[1] + "."
    return ""


def readable_names(model: onnx.ModelProto) -> dict[str, str]:
    """Rename in place: each node `<module>/<Op>` (e.g. `model.layers.3.mlp.down_proj/MatMul`),
    each MatMul or Gather weight `<module>.weight`, other parameters without the
    wrapper's prefix. MatMul weights are stored transposed ([in, out]).
    Returns the initializer renames."""
    graph = model.graph
    prefix = _wrapper_prefix(graph)
    initializers = {t.name for t in graph.initializer}
    renames: dict[str, str] = {}
    for node in graph.node:  # weights take the name of their first consumer
        if node.op_type in ("MatMul", "Gather") and node.input:
            weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
            module = _module_path(node, prefix)
            if weight in initializers and weight not in renames and module:
                renames[weight] = f"{module}.weight"
    for name in initializers - renames.keys():
        if name.startswith(prefix) and prefix:
            renames[name] = name[len(prefix):]
    taken = Counter(renames.values())
    renames = {old: new for old, new in renames.items() if taken[new] == 1 and new not in initializers - {old}}

    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    for value in list(graph.input) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)

    used: Counter = Counter()
    for node in graph.node:
        base = f"{_module_path(node, prefix) or 'graph'}/{node.op_type}"
        node.name = base if used[base] == 0 else f"{base}_{used[base]}"
        used[base] += 1
    return renames


# --- writing -------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs to stderr (e.g. 'torchvision is not installed'), which
    nbgrader would count against a graded cell."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Known noise of the pinned exporter, not the student's doing.
            warnings.filterwarnings("ignore", message=r".*will not be used, since it shares")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
            yield
    finally:
        log.setLevel(level)


def torch_export(wrapper: torch.nn.Module, example: tuple, onnx_file: Path, *, shapes: tuple | None = None,
                 names: tuple[list[str], list[str]] = (INPUT_NAMES, OUTPUT_NAMES)) -> None:
    """labkit's `torch.onnx.export` call (notebook 02's task 4 is the student's own):
    dynamo, named inputs and outputs, symbolic batch and sequence, weights in one
    external-data file beside the graph."""
    with export_patches():
        program = torch.onnx.export(wrapper, example, dynamo=True, input_names=names[0], output_names=names[1],
                                    dynamic_shapes=shapes or dynamic_shapes(), optimize=True, verbose=False)
    program.save(str(onnx_file), external_data=True)


def export_with(call, model: torch.nn.Module, out_dir: str | Path, *, wrapper: torch.nn.Module,
                example: tuple | None = None, finish=None) -> Path:
    """Run `call(wrapper, example, onnx_file)`, which must write `onnx_file` (the graph) and
    `onnx_file.data` (its weights), then name nodes and weights after their modules and
    run `onnx.checker`. The files are written in `<out_dir>.partial` and moved to
    `out_dir` only once the checker has passed them. `finish(graph)` may edit the graph
    (without weights) before the check. Returns `out_dir/model.onnx`."""
    out_dir = Path(out_dir)
    params = sum(p.numel() for p in model.parameters())
    check_writable(out_dir, int(4 * params * 1.05), ExportError)
    wrapper = wrapper.eval()
    example = example or example_inputs(model.config.vocab_size)
    steps = tqdm(total=3, desc="export", file=sys.stdout, unit="step")
    try:
        with staged_dir(out_dir, ExportError) as partial:
            steps.set_postfix_str("trace, translate, write (the slow part)")
            # inference_mode(False): a notebook cell run under inference_mode would
            # otherwise hand torch.export tensors it refuses to trace.
            with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
                call(wrapper, example, partial / MODEL_FILE)
            if not (partial / MODEL_FILE).is_file():
                raise ExportError(f"the export wrote no {MODEL_FILE}: save the program to the path it is given")
            steps.update()
            steps.set_postfix_str("name nodes and weights")
            graph = onnx.load(str(partial / MODEL_FILE), load_external_data=False)
            readable_names(graph)
            if finish is not None:
                finish(graph)
            onnx.save(graph, str(partial / MODEL_FILE))
            steps.update()
            steps.set_postfix_str("check")
            onnx.checker.check_model(str(partial / MODEL_FILE))
            steps.update()
    finally:
        steps.close()
    return out_dir / MODEL_FILE


def export_onnx(model: torch.nn.Module, out_dir: str | Path, *, wrapper: torch.nn.Module | None = None,
                shapes: tuple | None = None, example: tuple | None = None,
                names: tuple[list[str], list[str]] = (INPUT_NAMES, OUTPUT_NAMES), finish=None) -> Path:
    """Export `model` to `out_dir/model.onnx` + `model.onnx.data` (float32) with labkit's
    own call (`torch_export`) and return the model path; `names` are the graph's
    (inputs, outputs)."""
    def call(wrapped, inputs, onnx_file):
        torch_export(wrapped, inputs, onnx_file, shapes=shapes, names=names)

    return export_with(call, model, out_dir, wrapper=wrapper or LogitsWrapper(model), example=example,
                       finish=finish)
