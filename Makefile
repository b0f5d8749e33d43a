# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each creates .venv on first use and reinstalls only when a requirements file changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: run test lint browser-deps bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-stamp: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.dev-stamp: requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(VENV)/.run-stamp

run: $(VENV)/.run-stamp
	$(PY) app.py

# Browser tests need Debian's chromium; install it when we can (root with apt), else they skip
# with a message saying how to get it.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; browser tests will skip (apt-get install chromium)"; }

lint: $(VENV)/.dev-stamp
	$(PY) -m ruff check .

test: $(VENV)/.dev-stamp browser-deps
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(VENV)/.dev-stamp
	$(PY) -m demo bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
