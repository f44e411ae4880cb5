# Entry points. Everything installs into .venv from the package registries (torch from local wheels
# where the machine has them); nothing else is needed on a fresh machine.
# The interpreter the virtual environment is made from: `make install PYTHON=python3.12` picks it, a
# PYTHON in the environment does not (a CI job's PYTHON=.venv/bin/python names the venv not made yet).
ifneq ($(origin PYTHON),command line)
PYTHON := $(shell command -v python3.11 || command -v python3)
endif
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml commands call `python`: make it the virtual environment's.
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1
# No usage telemetry from Prefect's SDK (it reads this at import) or any other tool honouring it.
export DO_NOT_TRACK := 1
# ONNX Runtime's usage telemetry (a native thread posts to Microsoft) stays off too.
export ORT_DISABLE_TELEMETRY := 1
# Where the Prefect deployments run (prefect.yaml): this folder unless told otherwise.
export PIPELINE_WORKSPACE ?= $(CURDIR)
PREFECT_PORT ?= 4200

.PHONY: compare demo flow test test-unit test-e2e lint sample-data weights install clean server deploy worker retrain-ci promote plots report pool-docker pool-kubernetes

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1  # TensorRT's API for the lint's mypy; no deps: those need NVIDIA's libraries
	$(BIN)/python -m stages.reporting.charts  # the offline page template .dvc/config names, from the bundle just installed
	touch $@

## Create the sample dataset (only when data/dataset is absent) and track it with DVC.
sample-data: install
	test -d data/dataset || $(BIN)/python -m stages.data.sample_data --out data/dataset
	$(BIN)/python -m stages.core.lock --owner "make sample-data" -- $(BIN)/dvc add --quiet data/dataset

## Pretrained weights, explicitly (the pipeline never downloads): Ultralytics' released checkpoint MODEL,
## pinned by URL and SHA-256 (stages/data/weights.py), into weights/, then `dvc add`ed under the lock.
## Other machines get it with `dvc pull`. YOLO_WEIGHTS_MIRROR=<base URL> fetches from a mirror instead.
MODEL ?= yolo11n
weights: install
	$(BIN)/python -m stages.data.weights fetch $(MODEL)

## Install, create the sample data if absent, run the whole pipeline with DVC, push to the DVC remote
## (stages/core/remotes.py: a remote that fails is named, a dropped connection retried), then fail if
## the model missed the quality gate (recorded in metrics/evaluate.json either way).
## All of it holds the workspace lock (stages/core/lock.py), like a flow run.
demo: sample-data
	$(BIN)/python -m stages.core.lock --owner "make demo" -- sh -c '$(BIN)/dvc repro && $(BIN)/python -m stages.core.remotes push && $(BIN)/python -m stages.gate'

## Run the same pipeline as a Prefect flow (shares DVC's cache: cached stages are not re-run).
flow: sample-data
	$(BIN)/python -m flows.pipeline --workspace .

## Experiments side by side: the params that differ and the compared numbers (metrics/quality.json,
## metrics/deployment.json), the headline ones (gate, map50, map50_95) always, '-' for a number an
## experiment never measured; PER_CLASS=1 adds each class's AP (stages/reporting/compare.py).
compare: install
	$(BIN)/python scripts/compare.py $(if $(PER_CLASS),--per-class)

## Promote the current model to models/production when every check passes.
promote: install
	$(BIN)/python -m stages.promote

## The Prefect server and its UI (scripts/prefect_launch.py checks the settings, then runs it), then
## `export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api`. SQLite in PREFECT_HOME on loopback by
## default; DATABASE_URL or DATABASE_URL_FILE (postgresql+asyncpg://...) puts it on PostgreSQL.
## Beyond loopback (PREFECT_HOST) it needs AUTH_STRING_FILE (a file with user:password) and PUBLIC_URL
## (the https:// TLS reverse proxy, infra/proxy/). CSRF protection is always on, CORS its own origin only.
## Secrets come from files or the environment, never make's command line (`ps` shows that to all).
PREFECT_HOST ?= 127.0.0.1
server: install
	$(BIN)/python scripts/prefect_launch.py server --host $(PREFECT_HOST) --port $(PREFECT_PORT)

## Create the process work pool and the deployments of prefect.yaml on the server in PREFECT_API_URL:
## the local ones (this workspace, PIPELINE_WORKSPACE), and the fleet ones (each run clones
## PIPELINE_REPOSITORY at PIPELINE_REF) only when PIPELINE_REPOSITORY is set: without it their runs
## could clone nothing.
deploy: install
	$(BIN)/prefect work-pool inspect yolo-cpu >/dev/null 2>&1 || $(BIN)/prefect work-pool create yolo-cpu --type process
	$(BIN)/prefect --no-prompt deploy --name retrain --name retrain-on-new-data --name tune
	test -z "$(PIPELINE_REPOSITORY)" || PIPELINE_REF="$(PIPELINE_REF)" $(BIN)/prefect --no-prompt deploy --name retrain-fleet --name retrain-on-new-data-fleet

## GPU work pools on the server in PREFECT_API_URL, from the base job templates in infra/prefect/
## (a container per flow run from infra/docker/Dockerfile's image, GPUs requested, the shared DVC
## cache mounted); --overwrite updates a pool that exists. Point a deployment at one with its
## work_pool name; start its worker from the same image (PREFECT_WORK_POOL=<pool>).
POOL_DOCKER ?= yolo-gpu-docker
POOL_KUBERNETES ?= yolo-gpu-kubernetes

pool-docker: install
	$(BIN)/prefect work-pool create $(POOL_DOCKER) --type docker --base-job-template infra/prefect/docker-pool.json --overwrite

pool-kubernetes: install
	$(BIN)/prefect work-pool create $(POOL_KUBERNETES) --type kubernetes --base-job-template infra/prefect/kubernetes-pool.json --overwrite

## A process worker that runs the deployments' flow runs in this workspace, from the server in
## PREFECT_API_URL; with AUTH_STRING_FILE (or PREFECT_API_AUTH_STRING) where the server asks for one.
## It first checks that the server answers and accepts the credential (a clear refusal otherwise).
worker: install
	$(BIN)/python scripts/prefect_launch.py worker --pool yolo-cpu

## Every plot of dvc.yaml in one page that works offline: dvc_plots/index.html (README: Pictures).
plots: install
	$(BIN)/python -m stages.reporting.charts
	$(BIN)/dvc plots show --html-template $(CURDIR)/.cache/plots/offline.html

## The model card, reports/model_card.md and reports/model_card.html (the report stage, and what it needs).
report: install
	$(BIN)/python -m stages.core.lock --owner "make report" -- $(BIN)/dvc repro report

## What CI runs: pull, reproduce, push, metrics diff (scripts/ci_retrain.sh).
retrain-ci: install
	bash scripts/ci_retrain.sh

## All tiers, one test module per worker process, one worker more than there are cores: e2e modules
## spend part of their time waiting (servers starting, a launcher's join timeout, a queue worker), and
## the extra worker keeps the cores busy then (2 cores: 96-99% busy with 3 workers, 86% with 2).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-e2e: install
	$(BIN)/python -m pytest tests/e2e

lint: install
	$(BIN)/ruff check stages flows tests scripts benchmarks
	$(BIN)/ruff format --check stages flows tests scripts benchmarks
	$(BIN)/lint-imports --no-logo --cache-dir .cache/import-linter  # the layers: pyproject.toml [tool.importlinter]
	$(BIN)/python -m stages.backends.tensorrt_typecheck  # mypy: the TensorRT backend against TensorRT's API
	$(BIN)/zizmor --offline .github/workflows

clean:
	rm -rf data/prepared models metrics reports plots .cache
