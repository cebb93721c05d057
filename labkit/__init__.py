"""labkit: the code behind the on-device LLM deployment lab's notebooks."""
from .models import load, load_config, load_tokenizer, param_count, resolve_name
from .paths import artifacts_dir
from .quiet import notebook_setup

__all__ = ["artifacts_dir", "load", "load_config", "load_tokenizer", "notebook_setup",
           "param_count", "resolve_name"]
