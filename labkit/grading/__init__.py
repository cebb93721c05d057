"""How the course is graded: the referee and its child, the verdicts, the lockdown, the
sandbox, the nbgrader plug-ins and `labkit grade`. Imports from labkit, never the reverse."""
