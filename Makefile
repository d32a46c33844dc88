# lfm2q developer commands. `make test` and `make run` set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test test-slow bench run clean

install: $(STAMP)

# The test extra pins torch==2.13.0: pip takes the CPU wheel from the local wheel folder
# instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/bench_350m.py

run: install
	$(BIN)/lfm2q run $(MODEL)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
