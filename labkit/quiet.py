"""Keep graded cells free of stderr.

nbgrader gives a test cell zero points when it prints anything on stderr, and
torch, transformers, huggingface_hub and onnxruntime all write warnings and
progress bars there. `notebook_setup()` routes Python warnings to stdout (still
visible, no longer fatal) and turns the libraries' own chatter down.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings


def _warning_to_stdout(message, category, filename, lineno, file=None, line=None):
    print(f"[{category.__name__}] {message}", file=sys.stdout)


def notebook_setup() -> None:
    """Idempotent: safe to call from every notebook's first cell."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = _warning_to_stdout
    logging.lastResort = logging.StreamHandler(sys.stdout)
    logging.lastResort.setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # errors only
    except ImportError:
        pass
