# lfm2q developer commands. `make test` and `make run` set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install llamacpp test test-slow test-llamacpp test-arm64 bench bench-compare run clean

install: $(STAMP)

# The test extra pins torch==2.13.0: pip takes the CPU wheel from the local wheel folder
# instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(EDITABLE_QUIET) $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# setuptools prints an "Editable installation" note for any editable install whose packages map
# folders (lfm2q.convert -> convert/): information only, not a problem to fix.
EDITABLE_QUIET := PYTHONWARNINGS="ignore:Editable installation:UserWarning"

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# lfm2q on an emulated Raspberry Pi 5 and Pi 4 (qemu-user, Debian arm64, wheels only): the
# built-in model's generate (the text x86 gives) and run, then the kernel tests, on both CPUs.
# Needs root (debootstrap, chroot). The rootfs is built once into ~/.cache/lfm2q-arm64 (~10 min
# on 2 cores) and reused; cold numba caches under emulation take minutes (tests/arm64/test.sh).
test-arm64: install
	bash tests/arm64/test.sh

bench: install
	$(BIN)/python benchmarks/bench_350m.py

# llama-cpp-python (the `llamacpp` extra) is installed on first use: the first time pip builds
# llama.cpp from source (~6-10 min on 2 cores); later installs take the wheel from pip's cache.
# Built for this CPU (-march=native, as the benchmark needs) but without AMX: on virtual
# machines whose CPU reports AMX that the OS does not enable, llama.cpp's AMX kernels die
# with SIGILL (seen on a Xeon VM here). The flags are harmless on CPUs without AMX.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
	-DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
llamacpp: install
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  echo "installing llama-cpp-python (first time: builds llama.cpp, ~6-10 min)"; \
	  CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/pip install --quiet -e '.[llamacpp]'; }

test-llamacpp: llamacpp
	$(BIN)/python -m pytest -q -m llamacpp

# ~50 min on a quiet 2-core machine (see benchmarks/bench_compare.py); BENCH_ARGS=--quick checks the
# script in a few minutes.
bench-compare: llamacpp
	$(BIN)/python benchmarks/bench_compare.py $(BENCH_ARGS)

run: install
	$(BIN)/lfm2q run $(MODEL)

# The long fuzz campaign (docs/hostile-input.md): FUZZ_CASES mutated LFM2 GGUF files, each loaded
# and run in worker processes (a crash or hang is recorded, not fatal), then the tool-call parser
# with 20,000 hypothesis examples per property. `make test` runs a ~20 s share of both.
FUZZ_CASES ?= 100000
.PHONY: fuzz
fuzz: install
	$(BIN)/python tests/fuzz/fuzz_gguf.py --cases $(FUZZ_CASES) --out build/fuzz/gguf-record.json
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_toolcalls.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
