# The two commands a fresh machine needs:  `make serve`  and  `make test`  (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# constraints.txt is the lock (see `lock` below): every install takes its exact versions.
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: serve test lint bench lock clean

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

test: $(VENV)/.dev-installed
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
# The lock is compiled with this machine's Python (3.11) but the Docker image runs 3.12, so every pin
# must also have a CPython 3.12 wheel for the image's glibc: the last step downloads them to prove it
# (torch aside: its pin is a local cp311 CPU build, and the image installs no torch).
PIPTOOLS ?= /tmp/piptools
lock:
	test -x $(PIPTOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(PIPTOOLS) && \
		$(PIPTOOLS)/bin/python -m pip install --quiet pip==26.3 pip-tools==7.6.2; }
	CUSTOM_COMPILE_COMMAND='make lock' $(PIPTOOLS)/bin/pip-compile --quiet --all-extras --strip-extras \
		--allow-unsafe --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
		--output-file constraints.txt pyproject.toml constraints.in
	grep -v '^torch==' constraints.txt > $(PIPTOOLS)/pins-py312.txt
	$(PIPTOOLS)/bin/python -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
		--dest $(PIPTOOLS)/wheels-py312 --requirement $(PIPTOOLS)/pins-py312.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
