# Two commands: `make lab` runs the lab, `make test` runs the tests.
# Both create .venv on first use and install the project and the bundled model.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lab test browser-test release jupyter clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,grading]'
	$(PY) -m labkit install-model
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(PY) -m labkit lab

# The tests also cover the llama.cpp peer, whose package compiles llama.cpp (once, ~8 min).
test: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,grading,peers]'
	$(PY) -m pytest

# Notebook 04's chat box in JupyterLab in headless Chromium (Debian's package:
# apt-get install chromium). Not part of `make test`: it runs the notebook for real.
browser-test: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,grading,browser]'
	$(PY) -m pytest -m browser tests/browser -s

release: $(STAMP)
	$(PY) -m labkit release

jupyter: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
