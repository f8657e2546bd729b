# cellsynth: one command for set-up + run, one for set-up + tests.
# Everything runs offline on CPU; telemetry is off (see .telemetry and src/cellsynth/settings.py).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: install run test lint jupyter viz viz-build mlflow bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch first and pinned: the CPU build of 2.13.0 lies on these machines; anything looser pulls a CUDA build.
$(STAMP): $(BIN)/python requirements/requirements.txt pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements/requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name cellsynth --display-name "Python 3 (cellsynth)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

## make run: PBMC3K, fold 0, the default generators (kedro run --pipeline generation)
run: $(STAMP)
	$(BIN)/kedro run --pipelines generation

## make test: the whole test suite (under ~10 minutes on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Jupyter refuses to start as root (a container, CI) without --allow-root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

## make jupyter: JupyterLab on http://127.0.0.1:8888 with the project's kernel "cellsynth" (.venv's python)
jupyter: $(STAMP)
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name cellsynth --display-name "Python 3 (cellsynth)" >/dev/null
	$(BIN)/jupyter lab --ip 127.0.0.1 --port 8888 --no-browser --notebook-dir . $(ALLOW_ROOT) \
	    --MultiKernelManager.default_kernel_name=cellsynth

## make viz: kedro-viz; datasets hidden (the structure: one node per generator) at the second address
viz: $(STAMP)
	@echo "kedro-viz: http://127.0.0.1:4141 (structure only: http://127.0.0.1:4141/?pid=__default__&types=nodes)"
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

## make viz-build: a static kedro-viz site in build/ (opened as a file it is a blank page: serve it)
viz-build: $(STAMP)
	$(BIN)/kedro viz build
	@echo "kedro-viz site in build/. Serve it (a page opened from disk stays blank):"
	@echo "  $(BIN)/python -m http.server 4142 --bind 127.0.0.1 --directory build   # then http://127.0.0.1:4142"

## make mlflow: the UI on the project's store; artifacts from mlartifacts/ (experiments record them relative to it)
mlflow: $(STAMP)
	@echo "MLflow UI: open the link that kedro run printed last, or http://127.0.0.1:5000 > 'Model training' (top left) > cellsynth-<dataset>"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts \
	    --host 127.0.0.1 --port 5000

## make bench: speed, memory and honest quality of every generator on PBMC3K fold 0 (after make run)
bench: $(STAMP)
	@test -f data/05_model_input/pbmc3k/fold_0/train.h5ad || $(BIN)/kedro run --pipelines generation
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf data/02_intermediate/* data/03_primary/* data/04_feature/* data/05_model_input/* \
	       data/06_models/* data/07_model_output/* data/08_reporting/* build
