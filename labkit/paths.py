"""Where the lab writes what it generates (converted models, ONNX files, reports).

Never inside the assignment folder: nbgrader copies that folder into every
release and submission, and an ONNX file is gigabytes.
"""
from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS_ENV = "LABKIT_ARTIFACTS"


def artifacts_dir() -> Path:
    """`$LABKIT_ARTIFACTS`, else `$XDG_CACHE_HOME/labkit`, else `~/.cache/labkit`."""
    explicit = os.environ.get(ARTIFACTS_ENV)
    if explicit:
        root = Path(explicit).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "labkit"
    root.mkdir(parents=True, exist_ok=True)
    return root


def onnx_dir(model_name: str, variant: str = "fp32") -> Path:
    """Where a model's ONNX files live: <artifacts>/onnx/<model>/<variant>/."""
    return artifacts_dir() / "onnx" / model_name / variant


def artifact_path(*parts: str) -> Path:
    """A path below the artifacts directory; its parent folder exists."""
    path = artifacts_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
