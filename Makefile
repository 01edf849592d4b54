# The two commands: `make run` (the whole system on its embedded default) and `make test` (the whole suite).
# Each installs what it needs on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip warns about every local index folder this machine's pip config names but lacks; hide that noise only.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= embedded,registry,sim,ingest,vision,lake,advisor,llm,aws,console,notifier,trainer,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: run test lint bench screenshots run-deps system-deps clean

# The AsyncAPI parser that validates docs/asyncapi.yaml in the tests (npm, versions pinned by the lock file).
ASYNCAPI_DEPS := deploy/asyncapi/node_modules/.installed
$(ASYNCAPI_DEPS): deploy/asyncapi/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "installing nodejs and npm (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	cd deploy/asyncapi && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" $(QUIET_PIP)
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

# Debian packages the running system needs: a real MQTT broker, and espeak-ng for the console's spoken answers.
# Skipped when already there.
run-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { echo "installing mosquitto (Debian package)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) || \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null); }
	@command -v espeak-ng >/dev/null 2>&1 || \
	  { echo "installing espeak-ng (Debian package; the console speaks its answers)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) || \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null); }

# ... and what the tests need on top: Chromium for the browser tests, an OpenSSH server for the SFTP tests.
system-deps: run-deps
	@{ command -v chromium >/dev/null 2>&1 && command -v espeak-ng >/dev/null 2>&1; } || \
	  { echo "installing chromium and espeak-ng (Debian packages; the console's browser and voice tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium espeak-ng >/dev/null) || \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium espeak-ng >/dev/null); }
	@[ -x /usr/sbin/sshd ] || \
	  { echo "installing openssh-server (Debian package; the SFTP tests start a real sshd on a free port)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null) || \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null); }

run: $(STAMP) run-deps
	$(VENV)/bin/lineguard up

test: $(STAMP) system-deps $(ASYNCAPI_DEPS)
	$(VENV)/bin/ruff check .
	@# Byte-compile once: the end-to-end tests start every service at once, and on a fresh clone each process
	@# would otherwise compile the same modules while the readiness clocks run.
	@$(PY) -m compileall -q lineguard services simulator >/dev/null
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The README's console screenshots: the browser tests, writing into docs/ (a plain test run writes var/screenshots/).
screenshots: $(STAMP) system-deps
	LINEGUARD_SCREENSHOTS_DIR=$(CURDIR)/docs $(PY) -m pytest -q -p no:cacheprovider tests/integration/console/test_console_browser.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
