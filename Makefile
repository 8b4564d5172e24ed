# Two commands on a fresh machine (Debian/Ubuntu, Python 3.11, no GPU needed):
#   make serve   create .venv, install, start the cache service (store in ./flexsn-store)
#   make test    create .venv, install, run the test suite
# The install step also installs bubblewrap (the build jail) with apt-get when `bwrap`
# is missing. It runs under a lock, so `make serve` and `make test` may start at once:
# the second waits, then finds everything installed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   ?= .install.lock
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test install install-locked system-packages clean

install:
	@flock $(LOCK) $(MAKE) --no-print-directory install-locked

# Runs with $(LOCK) held. Nothing to do when the venv is newer than pyproject.toml and bwrap exists.
install-locked:
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ] && command -v bwrap >/dev/null; then exit 0; fi; \
	set -e; \
	$(MAKE) --no-print-directory system-packages; \
	$(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip; \
	$(PY) -m pip install -q torch==2.13.0; \
	$(PY) -m pip install -q -e '.[test]' 'triton==3.6.0' 'numpy<2.4'; \
	touch $(STAMP)
# (The CPU build of torch: a plain `torch` would pull a multi-GB CUDA build.)

# bubblewrap runs every build's user code in a jail; the service refuses to start without it.
system-packages:
	@command -v bwrap >/dev/null || { \
	  echo "installing bubblewrap (the build jail)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends bubblewrap; }

serve: install
	$(VENV)/bin/flexsn-cache serve

test: install
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) $(LOCK)
