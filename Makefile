# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/keras-lc train --out $(DEMO)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/keras-lc evaluate $(DEMO)/model.keras --json $(DEMO)/eval.json
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/keras-lc predict $(DEMO)/model.keras --out $(DEMO)/predictions
	@echo "Demo done: model $(DEMO)/model.keras, numbers $(DEMO)/eval.json, stage maps $(DEMO)/predictions/"

test: install
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info
