# nbgrader configuration for the on-device LLM deployment lab.
# Run nbgrader commands from this folder (the course root).
c = get_config()  # noqa: F821 - provided by nbgrader

c.CourseDirectory.course_id = "llm-deploy"
# Exporting and quantizing take minutes on a student laptop; nbgrader's
# default of 30 s per cell would zero every graded cell after a slow one.
c.Execute.timeout = 1200
# Nothing is read from the kernel after its last cell: stopping it at once saved the 1.5 s a
# graceful shutdown took for each graded notebook.
c.Execute.shutdown_kernel = "immediate"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# `nbgrader zip_collect llm_lab`: an LMS download of one zip (or folder) per student, named
# after the student, in downloaded/llm_lab/archive/. For Canvas's flat files
# (login_userid_submissionid_01_env.ipynb) use instead:
#   r".*/(?P<student_id>[^/_]+)_\d+_\d+_(?P<file_id>[^/]+\.ipynb)$"
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[^/]+)/(?P<file_id>[^/]+\.ipynb)$"
# `nbgrader release_feedback llm_lab` releases to the students who submitted through the
# exchange and names the others (zip_collect's), whose feedback/<student>/ you send yourself.
c.ExchangeFactory.release_feedback = "labkit.grading.nbgrader_plugins.ReleaseFeedback"

# A graded cell that a student deleted comes back from the gradebook instead of scoring 0
# (through `RestoreCells`, below, which gives it a cell id).
c.OverwriteCells.add_missing_cells = True

# Scores come from the checks, not from stderr noise; feedback never shows hidden tests.
# (labkit/grading/nbgrader_plugins.py says why.)
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds, GetGrades, IgnorePattern, LimitOutput,
    OverwriteKernelspec, SaveAutoGrades)

from labkit.grading.nbgrader_plugins import (  # noqa: E402
    HideHiddenTests, PrepareShared, Referee, RestoreCells, StderrIsNotAFailure, TimedExecute)

# Scores come from labkit's referee (labkit/grading/referee.py), which re-checks each graded cell
# outside the student's kernel; the checks in the notebook are the student's instant feedback.
# The student's kernel runs in labkit's sandbox (labkit/grading/sandbox.py): no instructor files, no
# other submissions, no network, the shared artifacts read-only (PrepareShared builds them).
c.Execute.kernel_manager_class = "labkit.grading.nbgrader_plugins.SandboxedKernelManager"
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoreCells, CheckCellMetadata]
c.Autograde.autograde_preprocessors = [
    PrepareShared, TimedExecute, StderrIsNotAFailure, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
    Referee, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
