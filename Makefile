# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test proto lint bench soak clean-demo help

help:
	@echo "make demo   install into .venv, start an embedded Redis, run the fraud flow end to end"
	@echo "make test   run the test suite (what CI runs)"
	@echo "make proto  regenerate the gRPC stubs from augur/api/v1/*.proto"
	@echo "make lint   ruff"
	@echo "make bench  Augur vs a Feast-based server vs the floors, fraud and wide (~10 min)"
	@echo "make soak   fault and soak run: load while Redis stops, pauses, slows; 3x overload"

$(STAMP): pyproject.toml setup.py augur/features/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/augur demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

proto: $(STAMP)
	$(BIN)/python -m augur.api.generate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-demo:
	rm -rf .augur

bench: $(STAMP)
	$(BIN)/python -m bench.harness --scenario fraud
	$(BIN)/python -m bench.harness --scenario wide

soak: $(STAMP)
	$(BIN)/python -m bench.faults
