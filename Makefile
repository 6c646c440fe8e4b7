# The two commands a fresh machine needs:  `make serve`  and  `make test`  (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# constraints.txt is the lock (see `lock` below): every install takes its exact versions.
# PIP_EXTRA: more pip options, e.g. PyTorch's CPU wheel index (README, "torch without CUDA").
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt $(PIP_EXTRA)
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: serve dev test lint bench lock lock-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs only the core dependencies (no torch): the same `pip install .` as the Dockerfile.
$(VENV)/.serve-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) .
	@touch $@

# Development: training, export and test tools too, the project itself editable.
$(VENV)/.dev-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[train,export,dev]'
	@touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/gunicorn --config serving/gunicorn.conf.py 'serving:create_app()'

dev: $(VENV)/.dev-installed

test: $(VENV)/.dev-installed lock-check
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serve_load.py

# The lock: constraints.txt, compiled by pip-tools from pyproject.toml (every extra) and the hand-written
# constraints.in. pip-tools lives in a throwaway venv outside the project, so it never becomes one of its
# dependencies. Pins already in the lock are kept (add a dependency, and only it and what it needs get
# pinned); `make lock UPGRADE=1` moves every package to the newest release the constraints allow.
# It resolves from the public index alone (no local wheel folder, no site pip config), so the lock holds what
# a user anywhere gets, torch's CUDA dependencies included; `torch==2.13.0` is also met by a local CPU build
# (2.13.0+cpu, as this workplace's wheel folder has), which pip then prefers. lock-check then proves the lock
# resolves, extra by extra, on every supported Python.
PIPTOOLS ?= /tmp/piptools
PUBLIC_PIP := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null
lock:
	test -x $(PIPTOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(PIPTOOLS) && \
		$(PIPTOOLS)/bin/python -m pip install --quiet pip==26.3 pip-tools==7.6.2; }
	$(PUBLIC_PIP) CUSTOM_COMPILE_COMMAND='make lock' $(PIPTOOLS)/bin/pip-compile --quiet --all-extras \
		--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
		--index-url https://pypi.org/simple --output-file constraints.txt pyproject.toml constraints.in
	$(MAKE) lock-check

# Every extra resolves from https://pypi.org alone (no local wheels, no site pip config) on each Python the
# classifiers in pyproject.toml list that is installed here; metadata only, nothing large is downloaded.
lock-check:
	$(PYTHON) tools/lock_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
