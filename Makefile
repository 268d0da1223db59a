# The same targets serve people and CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-all demo demo-degraded lint typecheck lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/printfleet up --demo

# Two tiers (README "Set up"). `make test`: every invariant at small size, on XDIST workers (tests
# use free ports and their own tmp paths); worksteal keeps the long chaos runs from leaving a worker
# idle at the end. 3 workers finish the tier in 5 min 16 s on a quiet 2-core machine against 6 min
# 16 s for 2, but under 3 a controller's shutdown hung once on mosquitto (test_bridge_security), so
# 2 stay the default until that is understood.
# `make test-all`: the same, then the full-size runs (-m full) one at a time; exit code 5 (nothing
# marked full collected) is not a failure. `make test-fast`: the sub-minute loop, no slow tests.
XDIST ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(XDIST) --dist worksteal

test: $(STAMP)
	$(PYTEST) -m "not full"

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not full"

test-all: $(STAMP)
	$(PYTEST) -m "not full"
	$(BIN)/python -m pytest -q -m full || [ $$? -eq 5 ]

demo: $(STAMP)
	$(BIN)/printfleet demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy kernel printfleet broker cloud device_agent phone_bridge

# Re-resolve the tested versions after changing pyproject.toml.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet --upgrade "pip>=24"
	.lockenv/bin/python -m pip install --quiet ".[all,test]"
	.lockenv/bin/python -m pip freeze --exclude printfleet > constraints.txt
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
