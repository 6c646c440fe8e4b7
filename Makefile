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

.PHONY: serve dev test lint bench lock lock-check clean docs docs-check image image-test k8s-manifests

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

test: $(VENV)/.dev-installed lock-check docs-check
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(MAKE) image-test

# ---- the container image and the cluster manifests (README, "Deploy") ----
IMAGE      ?= cifar10-serving
BASE_IMAGE ?=
# docker where a Docker engine answers, else Debian's buildah (chroot isolation, no daemon; as root).
IMAGE_TOOL ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo buildah)
# A CA bundle pip inside a buildah build trusts, where the network needs one (a TLS-inspecting proxy).
BUILD_CA   ?= $(or $(PIP_CERT),$(SSL_CERT_FILE))
IMAGE_TEST_OUT ?= build/image-test.json
K8S_OUT    ?= build/k8s

image:
	$(PYTHON) tools/image.py build --tool $(IMAGE_TOOL) --image $(IMAGE) $(if $(BASE_IMAGE),--base $(BASE_IMAGE)) \
		$(if $(BUILD_CA),--ca $(BUILD_CA))

# Builds (through `make image`, with buildah) on python:3.12-slim, or on a Debian stand-in made with mmdebstrap
# where no registry answers, runs the container read-only and checks it from outside (tools/image_test.py).
# Skips, saying why, only where buildah is not installed (.ci/run installs it).
image-test: $(VENV)/.serve-installed
	$(BIN)/python tools/image_test.py --image $(IMAGE) $(if $(BASE_IMAGE),--base $(BASE_IMAGE)) --out $(IMAGE_TEST_OUT)

# deploy/k8s/*.yaml with the Deployment's image set to IMAGE (and the KServe InferenceService's storageUri to
# STORAGE_URI, if given), validated, in K8S_OUT: `kubectl apply -f build/k8s/`.
k8s-manifests: $(VENV)/.dev-installed
	$(BIN)/python tools/k8s_manifests.py render --image $(IMAGE) --out $(K8S_OUT) \
		$(if $(STORAGE_URI),--storage-uri $(STORAGE_URI))

# Every table of figures in README.md and docs/*.md, between `<!-- generated: NAME -->` lines, is written by
# export/report.py from weights/MANIFEST.json, benchmarks/results/*.json and docs/runs/ (standard library only:
# no venv needed). `make docs` rewrites them; `make docs-check` (run by `make test`) fails while a page differs.
docs:
	$(PYTHON) -m export.report

docs-check:
	$(PYTHON) -m export.report --check

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
