# Two entry points (see README): `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-runtime demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# runtime only: onnx, onnxruntime, numpy, click, pillow (no torch)
setup-runtime: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# everything: runtime + torch, zennit, test tools
setup: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: setup-runtime
	$(BIN)/lrpgraph demo --out out/demo

test: setup
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf out .pytest_cache
