# `make demo` and `make test` work on a fresh machine: they create .venv and
# install Sentinelle with its dev extras the first time (or when pyproject, setup.py
# or a compiled loop's source changes: the install builds them).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench load docs clean

$(STAMP): pyproject.toml setup.py detectors/_cusum.c detectors/_idhash.c detectors/_bins.c \
		streams/core/_batchparse.c
	@echo "installing Sentinelle and its dev extras into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PYTHON) -m venv $(VENV)
	@( $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e '.[dev]' ) \
		> $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sentinelle demo

# The dashboard's browser test drives Debian's headless Chromium (no browser download):
# installed here the first time, with apt-get (as root, or through sudo).
BROWSER := /usr/bin/chromedriver
$(BROWSER):
	@echo "installing chromium and chromium-driver (Debian packages) for the browser test ..."
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get install -y -q chromium chromium-driver \
		  || ( $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver ) \
		) > $(VENV)/apt.log 2>&1 || { tail -20 $(VENV)/apt.log; exit 1; }

# The dashboard's queries are run by a real Prometheus (Debian's), installed the same way.
PROMETHEUS := /usr/bin/prometheus
$(PROMETHEUS):
	@echo "installing prometheus (Debian package) for the dashboard query test ..."
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get install -y -q prometheus \
		  || ( $$SUDO apt-get update -q && $$SUDO apt-get install -y -q prometheus ) \
		) > $(VENV)/apt-prometheus.log 2>&1 || { tail -20 $(VENV)/apt-prometheus.log; exit 1; }

test: $(STAMP) $(BROWSER) $(PROMETHEUS)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/e2e.py

load: $(STAMP)
	$(BIN)/python bench/load.py

docs: $(STAMP)
	$(BIN)/python -m streams.config_doc > docs/CONFIGURATION.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
