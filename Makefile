# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-grpc-latest proto lint bench soak clean-demo help

help:
	@echo "make demo   install into .venv, start an embedded Redis, run the fraud flow end to end"
	@echo "make test   run the test suite (what CI runs)"
	@echo "make test-grpc-latest  the serving tests again on the newest grpcio (CI runs it too)"
	@echo "make proto  regenerate the gRPC stubs from augur/api/v1/*.proto and augur/api/oip/*.proto"
	@echo "make lint   ruff"
	@echo "make bench  Augur vs a Feast-based server, MLServer alone and the floors, fraud and wide, and the profile by stage (~12 min)"
	@echo "make soak   fault and soak run: load while Redis stops, pauses, slows; 3x overload"

$(STAMP): pyproject.toml setup.py augur/features/_native.c augur/serving/_wire.c augur/serving/_tally.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,fleet,skew,oip,otel,runtimes]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/augur demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The green pool patches grpc._server's privates: the serving tests run again on the newest
# grpcio release, in a venv of their own, so that a change there shows the day it ships rather
# than the day the pin moves. That venv sees .venv's packages after its own (a .pth file adds
# them, as --system-site-packages adds the system's), so it installs only the newest grpcio
# over them (with .venv's pip: a pip and setuptools of its own would hide .venv's), where a
# second install of everything took 2.3 of CI's 30 minutes. grpcio is upgraded on every run.
# The one test deselected asserts the pinned version itself.
LATEST := .venv-grpc-latest
LATEST_STAMP := $(LATEST)/.installed
GRPC_TESTS := tests/test_green.py tests/test_predict.py tests/test_batching.py \
	tests/test_batcher.py tests/test_errors.py tests/test_shutdown.py

# `feast`, the one command the tests run beside their Python (examples/fraud/scaffold.py), is
# copied to run on this venv's.
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])

$(LATEST_STAMP): $(STAMP)
	rm -rf $(LATEST)
	$(PYTHON) -m venv --without-pip $(LATEST)
	echo "import site; site.addsitedir('$$($(BIN)/python -c '$(PURELIB)')')" \
		> "$$($(LATEST)/bin/python -c '$(PURELIB)')/augur-venv.pth"
	sed '1s|.*|#!$(CURDIR)/$(LATEST)/bin/python|' $(BIN)/feast > $(LATEST)/bin/feast
	chmod +x $(LATEST)/bin/feast
	touch $(LATEST_STAMP)

test-grpc-latest: $(LATEST_STAMP)
	$(BIN)/python -m pip --python $(LATEST)/bin/python install --quiet --upgrade \
		grpcio grpcio-health-checking grpcio-reflection
	@$(LATEST)/bin/python -c 'import grpc; print("grpcio", grpc.__version__)'
	$(LATEST)/bin/python -m pytest -q $(GRPC_TESTS) \
		--deselect tests/test_green.py::test_grpc_is_the_release_the_green_pool_was_checked_against

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
	$(BIN)/python -m bench.profile_predict --scenario fraud

soak: $(STAMP)
	$(BIN)/python -m bench.faults
