# llmlb - the two Quick start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The browser tests' chromium (Debian's package; see the chromium target).
CHROMIUM := /usr/bin/chromium
# llama-cpp-python (test extra) compiles llama.cpp: skip its examples, tests and tools.
# stable-diffusion-cpp-python ignores these. GPU: CMAKE_ARGS="-DSD_CUDA=ON" make demo
export CMAKE_ARGS := $(CMAKE_ARGS) -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
# pip (26+) shows the build backend's warnings even with --quiet. An editable install of this
# project (its folders install under other names: see pyproject.toml) always gets setuptools'
# notice "Editable installation ... be careful with folders in your working directory": only
# that notice is silenced, any other warning still shows.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip

# The suite on pytest-xdist workers (`make test PYTEST_WORKERS=0` runs it in one process). By
# file: a module's fixtures (a cluster of nodes, a loaded model) start once, on one worker.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

.PHONY: demo test test-unit lint bench install clean chromium postgresql redis-server nginx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The router, the node and the StableDiffusion runtime, and the openai SDK for the banner's
# example. stable-diffusion-cpp-python compiles from source the first time (~3 min on 2 cores);
# pip caches the wheel.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[demo]'
	touch $@

# Plus the test tools and a real OpenAI-compatible text server (llama-cpp-python compiles
# llama.cpp the first time: 10-20 min on 2 cores; cached afterwards).
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-demo
	$(PIP) install --quiet -e '.[sd,test]'
	touch $@

install: $(VENV)/.installed-test

# What tests/unit needs alone: pytest, the openai SDK, numpy and gguf; nothing that compiles
# (neither llama-cpp-python nor stable-diffusion-cpp-python), so a first `make test-unit` takes
# seconds.
$(VENV)/.installed-unit: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[unit]'
	touch $@

# Router + one local node serving the synthetic demo model (made on first run).
demo: $(VENV)/.installed-demo
	$(BIN)/llmlb demo

# $(call apt-install,PACKAGE,WHAT NEEDS IT,MISSING): Debian's PACKAGE installed with apt-get as
# root (CI); otherwise a hint naming MISSING, and the tests that need it skip (outside CI).
apt-install = \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make: installing Debian's $(1) for $(2)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $(1) || { apt-get update -q && apt-get install -y -q $(1); }; \
	else \
	  echo "make: $(3) is missing: sudo apt-get install -y $(1) ($(2) skip without it)"; \
	fi

# The dashboard's browser tests (tests/browser) drive Debian's chromium with Playwright (never
# `playwright install`). Installed here when missing.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then $(call apt-install,chromium,tests/browser,$(CHROMIUM)); fi

# The PostgreSQL tests (tests/support/postgres.py) start a private server from the binaries of
# Debian's postgresql package (initdb, pg_ctl; no system cluster is used). Installed when missing.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  $(call apt-install,postgresql,the PostgreSQL tests,initdb); \
	fi

# The Redis tests (tests/support/redis.py) start a private redis-server per pytest-xdist worker
# (no system instance is used). Debian's redis-server, installed when missing.
redis-server:
	@if ! command -v redis-server >/dev/null; then \
	  $(call apt-install,redis-server,the Redis tests,redis-server); \
	fi

# The router-replica tests put nginx in front of the routers (tests/support/nginx.py; a private
# config and folder per balancer, no system instance). Debian's nginx, installed when missing.
nginx:
	@if [ ! -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null; then \
	  $(call apt-install,nginx,the nginx tests,nginx); \
	fi

# The whole test suite (CI runs exactly this through .ci/run).
test: $(VENV)/.installed-test chromium postgresql redis-server nginx
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

# The fast loop: unit tests only (pure functions, balancer, forwarding; seconds).
test-unit: $(VENV)/.installed-unit
	$(BIN)/python -m pytest -q tests/unit

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.router_overhead
	$(BIN)/python -m bench.stream_overhead
	$(BIN)/python -m bench.node_bench
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.abandoned
	$(BIN)/python -m bench.stop_now
	$(BIN)/python -m bench.upload_memory

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
