# The two commands of the README: `make run` and `make test`.
# Each installs what is missing (system packages, then .venv) and is safe to repeat.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck system-deps test-tools venv clean bench

run: system-deps $(STAMP)
	@echo "starting the appliance; in another terminal try:"
	@echo "  $(BIN)/appliance request \"rain on a tin roof\" --duration 4 --out rain.wav"
	APPLIANCE_LOGGING__FORMAT=$${APPLIANCE_LOGGING__FORMAT:-text} \
	APPLIANCE_WORKERS__POOL=$${APPLIANCE_WORKERS__POOL:-'[{"device":"cpu","model":"tangoflux"},{"device":"cpu","model":"sa3"}]'} \
	$(BIN)/appliance serve

test: system-deps $(STAMP) test-tools
	$(BIN)/ruff check appliance tests bench testkit
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check appliance tests bench testkit

typecheck: $(STAMP)
	$(BIN)/mypy

system-deps:
	@sh scripts/install-system-deps.sh

# systemd-analyze, promtool and hadolint for the operations tests (nothing is started).
test-tools: $(STAMP)
	@VENV=$(VENV) sh scripts/install-test-tools.sh

venv: $(STAMP)

# torch goes in first, alone: 2.13.0 is the CPU build on this machine; anything
# installed after it that accepts 2.13.0 leaves it alone (no CUDA download).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
