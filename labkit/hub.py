"""Getting a real checkpoint (Qwen3-1.7B) onto the machine and checking it is whole.

Downloads go through huggingface_hub, which resumes interrupted files, and
honour `HF_ENDPOINT` (a mirror). Before any download the endpoint is probed
with a short timeout, so an offline machine gets an answer in seconds rather
than a hang.
"""
from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from urllib.parse import urlparse

from .errors import LabkitError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 5.0
FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


class IncompleteModelFolder(LabkitError, RuntimeError):
    pass


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub endpoint accepts a TCP connection, else why not."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {url.scheme}://{url.hostname}:{port} ({exc.__class__.__name__}: {exc})"


def safetensors_expected_size(path: Path) -> int:
    """The size a safetensors file must have, read from its own header: a
    truncated download is caught without any network."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise IncompleteModelFolder(f"{path.name}: {len(raw)} bytes, no safetensors header")
        header_len = struct.unpack("<Q", raw)[0]
        try:
            header = json.loads(f.read(header_len))
        except ValueError as exc:
            raise IncompleteModelFolder(f"{path.name}: unreadable safetensors header ({exc})") from exc
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return 8 + header_len + end


def verify_model_folder(folder: Path, expected_sizes: dict[str, int] | None = None) -> list[str]:
    """Check a Hugging Face folder is complete; return its weight files.

    Config and tokenizer must load; every shard named in the index must exist
    with the size its header (and the hub, when `expected_sizes` is given) says.
    """
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(folder)
    problems = []
    try:
        AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - any failure means the folder is unusable
        problems.append(f"config does not load: {exc}")
    try:
        AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"tokenizer does not load: {exc}")

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            problems.append(f"missing weight file {shard}")
            continue
        actual = path.stat().st_size
        try:
            want = safetensors_expected_size(path)
        except IncompleteModelFolder as exc:
            problems.append(str(exc))
            continue
        if expected_sizes and shard in expected_sizes:
            want = expected_sizes[shard]
        if actual != want:
            problems.append(f"{shard} has {actual} bytes, expected {want} (interrupted download?)")
    if problems:
        raise IncompleteModelFolder(f"{folder} is not a complete model folder:\n  - "
                                    + "\n  - ".join(problems))
    return shards


def download(repo_id: str, folder: Path) -> Path:
    """Download (or resume) `repo_id` into `folder` and verify it."""
    reason = hub_unreachable_reason()
    if reason:
        raise ConnectionError(f"cannot download {repo_id}: {reason}")
    from huggingface_hub import HfApi, snapshot_download

    print(f"Downloading {repo_id} from {endpoint()} into {folder} (resumes if interrupted) ...",
          flush=True)
    snapshot_download(repo_id, local_dir=folder, allow_patterns=FILE_PATTERNS, endpoint=endpoint())
    info = HfApi(endpoint=endpoint()).model_info(repo_id, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings if s.size is not None}
    verify_model_folder(folder, sizes)
    return folder
