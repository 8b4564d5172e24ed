# Two commands on a fresh machine (Debian/Ubuntu, Python 3.11, no GPU needed):
#   make serve   create .venv, install, start the cache service (store in ./flexsn-store)
#   make test    create .venv, install, run the test suite
# The install step also installs the Debian packages each one needs when their commands are
# missing: bubblewrap (the build jail) for both, chromium (headless browser tests) and redis-server
# (the Redis store's tests) for `make test`.
# It runs under a lock, so `make serve` and `make test` may start at once on a fresh clone:
# the second waits, then finds everything installed (and adds only what it needs on top).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   ?= .install.lock
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# System packages as COMMAND:PACKAGE pairs: PACKAGE is installed when COMMAND is missing.
# Serving needs the jail; the tests also drive a headless browser (tests/browser.py) and start
# a real Redis server for the shared store's tests (tests/redis_server.py). Serving with the
# embedded store does not need Redis; nginx and wrk are bench-only (bench/read_bench.py installs them).
SERVE_PACKAGES := bwrap:bubblewrap
TEST_PACKAGES  := $(SERVE_PACKAGES) chromium:chromium redis-server:redis-server

.PHONY: serve test install install-test install-locked system-packages check-image clean

install:
	@flock $(LOCK) $(MAKE) --no-print-directory install-locked PACKAGES="$(SERVE_PACKAGES)"

install-test:
	@flock $(LOCK) $(MAKE) --no-print-directory install-locked PACKAGES="$(TEST_PACKAGES)"

# Runs with $(LOCK) held: the system packages first (a no-op when their commands exist), then
# the venv, unless it is newer than pyproject.toml.
install-locked: system-packages
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then exit 0; fi; \
	set -e; \
	$(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip; \
	$(PY) -m pip install -q torch==2.13.0; \
	$(PY) -m pip install -q -e '.[test]' 'triton==3.6.0' 'numpy<2.4'; \
	touch $(STAMP)
# (The CPU build of torch: a plain `torch` would pull a multi-GB CUDA build.)

# bubblewrap runs every build's user code in a jail; the service refuses to start without it.
# Every missing package of $(PACKAGES) in one apt-get call (e.g. `command -v bwrap` fails -> bubblewrap).
system-packages:
	@missing=""; \
	for pair in $(PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $$(echo $$pair | cut -d: -f2)"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# FLEXSN_SERVICE_* variables pass through, e.g. FLEXSN_SERVICE_HTTP_WORKERS=3 make serve (default 2).
serve: install
	$(VENV)/bin/flexsn-cache serve

test: install-test
	$(PY) -m pytest -n 2 -q

# The Docker image's install steps in a plain venv, then the service from that install
# (no Docker engine needed; 3 to 5 minutes here, mostly pip). Not part of `make test`.
check-image:
	bash docker/check-install.sh

clean:
	rm -rf $(VENV) $(LOCK)
