"""One base for labkit's errors. Each says in its message what to do; `python -m labkit`
prints any of them as one line instead of a traceback."""


class LabkitError(Exception):
    """An error whose message tells the user what to do next."""
