# make demo / make test set everything up themselves (venv, install, Mosquitto), then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keyop-installed
SYSTEM := $(VENV)/.keyop-system

.PHONY: setup demo test lint typecheck unit clean

setup: $(STAMP) $(SYSTEM)

$(SYSTEM): scripts/ensure-system.sh
	PYTHON=$(PYTHON) bash scripts/ensure-system.sh
	@mkdir -p $(VENV) && touch $@

$(BIN)/python: | $(SYSTEM)
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@touch $@

demo: setup
	$(BIN)/keyop demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/vulture

test: setup lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
