"""labkit: the code behind the on-device LLM deployment lab's notebooks."""
from .models import grading as autograding, load, load_config, load_tokenizer, param_count, resolve_name
from .paths import artifacts_dir
from .messages import say
from .quiet import notebook_setup

__all__ = ["artifacts_dir", "autograding", "demonstration", "load", "load_config", "load_tokenizer",
           "notebook_setup", "param_count", "resolve_name", "say"]


def demonstration(what: str) -> bool:
    """Whether to run a cell that shows something but grades nothing: always, except under
    nbgrader autograde, where it would cost every submission its minutes."""
    if autograding():
        print(say("demonstration.skipped", sep=" ", what=what))
        return False
    return True
