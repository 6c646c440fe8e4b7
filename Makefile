# The two commands a fresh machine needs:  `make serve`  and  `make test`  (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: serve test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs only the core dependencies (no torch): the same `pip install .` as the Dockerfile.
$(VENV)/.serve-installed: $(BIN)/python pyproject.toml
	$(PIP) .
	@touch $@

# Development: training, export and test tools too, the project itself editable.
$(VENV)/.dev-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[train,export,dev]'
	@touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/gunicorn --config serving/gunicorn.conf.py 'serving:create_app()'

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
