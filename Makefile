# The two commands: `make run` (the whole system on its embedded default) and `make test` (the whole suite).
# Each installs what it needs on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip warns about every local index folder this machine's pip config names but lacks; hide that noise only.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= embedded,registry,sim,ingest,vision,lake,advisor,llm,aws,notifier,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: run test lint bench system-deps clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" $(QUIET_PIP)
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

# Debian packages the tests need (a real MQTT broker). Skipped when already there.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { echo "installing mosquitto (Debian package)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) || \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null); }

run: $(STAMP)
	$(VENV)/bin/lineguard up

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
