# The HTTP service alone: a slim Python, the serving dependencies (no torch), the packaged weights,
# a non-root user. The install step is the same `pip install .` as `make serve`, with the same locked
# versions (constraints.txt, `make lock`; every pin there has a wheel for this Python).
#
#   docker build -t cifar10-serving .
#   docker run --rm -p 8000:8000 -e WORKERS=2 cifar10-serving
#
# WORKERS defaults to the CPUs the container may run on; set it to the CPU quota when there is one.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
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
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY weights ./weights

USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz\", timeout=4)"]
CMD ["gunicorn", "--config", "serving/gunicorn.conf.py", "serving:create_app()"]
