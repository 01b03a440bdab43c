# `make run`, `make test` and `make e2e` each set up everything they need on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test e2e local-model lint bench lock clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The gateway on :8080; without VLLM_BASE_URL or GATEWAY_CONFIG, in front of a small local model
# (llama.cpp and SmolLM2-135M, built and fetched once into $${GATEWAY_CACHE_DIR:-~/.cache/llm-tool-gateway}).
run: $(STAMP)
	$(BIN)/python -m scripts.run_local

# The tests start their own redis-server (shared state, per-key limits): install Debian's when it is missing.
test: $(STAMP)
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
		|| { echo "redis-server is needed by the tests: install it (Debian/Ubuntu: apt-get install redis-server)"; exit 1; }
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Build llama-server and fetch the model now, so that `make run` and `make e2e` start at once.
local-model: $(STAMP)
	$(BIN)/python -m e2e.local_model build

# The end-to-end suite against a real model server: the local one, or E2E_BASE_URL (see README).
e2e: $(STAMP)
	if [ -z "$$E2E_BASE_URL" ]; then $(BIN)/python -m e2e.local_model build; fi
	$(BIN)/pytest e2e --timeout=300 $(E2E_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

# requirements.lock: the image's runtime dependencies (with the `semantic` extra), pinned with hashes, resolved from
# pyproject.toml by pip-tools in a throwaway venv (the dev venv stays as it is). Run it after changing `dependencies`.
PIP_TOOLS_VERSION := 7.6.2
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet "pip-tools==$(PIP_TOOLS_VERSION)" && \
	"$$tmp/venv/bin/pip-compile" --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-trusted-host --no-emit-find-links --extra semantic \
		--output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
