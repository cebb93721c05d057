"""Signs, in a student's code, of going for points without the work: for the instructor's eyes.

A string search is not a defence (`exec`, `getattr`, `importlib`, base64 all get around
one): the referee and the sandbox are. It is an extra signal in `grading_summary.csv`'s
integrity column, next to what the referee actually refused, so that an attempt which
failed still reaches a person.
"""
from __future__ import annotations

import re

SIGNS = {
    "reaching for the instructor's files": r"gradebook|\bsource/|submitted/|autograded/|labkit-grade|referee-key"
                                           r"|nbgrader_config",
    "changing the checks": r"labkit\.checks\b|from labkit import[^\n]*\bchecks\b|\bchecks\.\w+\s*=|set_custom_exc"
                           r"|excepthook"
                           r"|sys\.settrace|sys\.setprofile|addaudithook|events\.register|input_transformers",
    "reaching into labkit's code": r"__code__|importlib\.reload|inspect\.getsource|labkit/\w+\.py"
                                   r"|spec_from_file_location",
    "hiding what runs": r"\bb64decode\b|\bmarshal\b|\bctypes\b|__builtins__",
}
_COMPILED = {sign: re.compile(pattern) for sign, pattern in SIGNS.items()}


def scan(cells: list[str]) -> list[str]:
    """'cell N: <sign> (<what matched>)' for each sign in the student's cells."""
    found = []
    for i, code in enumerate(cells):
        for sign, pattern in _COMPILED.items():
            match = pattern.search(code)
            if match:
                found.append(f"cell {i + 1}: {sign} ({match.group(0).strip()})")
    return found
