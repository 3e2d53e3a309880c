# llmlb - the two Quick start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

# Creates the virtualenv and installs llmlb with the StableDiffusion runtime and test tools.
# stable-diffusion-cpp-python compiles from source the first time (~3 min on 2 cores);
# pip caches the wheel. GPU build: CMAKE_ARGS="-DSD_CUDA=ON" make install
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[sd,test]'
	touch $(STAMP)

install: $(STAMP)

# Router + one local node serving the synthetic demo model (made on first run).
demo: $(STAMP)
	$(BIN)/llmlb demo

# The whole test suite (CI runs exactly this through .ci/run).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.router_overhead

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
