# Two-command setup: `make demo` and `make test` both create .venv and install what they need.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo bench clean

$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(VPY) -m pytest

demo: install
	$(VENV)/bin/transmamba bench kernels --quick

bench: install
	$(VENV)/bin/transmamba bench kernels

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
