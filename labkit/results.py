"""Figures a notebook records for a later one (notebook 04's tokens/s feed
notebook 05's chart): one JSON file under the artifacts directory."""
from __future__ import annotations

import json

from .paths import artifact_path


def _path():
    return artifact_path("results.json")


def recorded() -> dict:
    path = _path()
    return json.loads(path.read_text()) if path.is_file() else {}


def record(key: str, value) -> None:
    """Store `value` (anything JSON can hold) under `key`, keeping the other keys."""
    data = recorded()
    data[key] = value
    path = _path()
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)  # a crash mid-write never leaves a half file
