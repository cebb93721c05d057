# nbgrader configuration for the on-device LLM deployment lab.
# Run nbgrader commands from this folder (the course root).
c = get_config()  # noqa: F821 - provided by nbgrader

c.CourseDirectory.course_id = "llm-deploy"
# Exporting and quantizing take minutes on a student laptop; nbgrader's
# default of 30 s per cell would zero every graded cell after a slow one.
c.Execute.timeout = 1200
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
