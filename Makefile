# Every target runs inside .venv, built from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
# Folder of the original MNIST files for offline runs, e.g. MANUAL_DIR=../shared/data/mnist;
# empty = the normal TFDS download.
MANUAL_DIR ?=
OFFLINE := $(if $(MANUAL_DIR),--set ingest.manual_dir=$(MANUAL_DIR))
# bench-accuracy's presets, e.g. PRESETS='best resnet'
PRESETS ?= best

.PHONY: help install pipeline component test docs models nightly bench-models bench-accuracy bench-train bench-cache bench-orchestrators bench-scale bench-user-images bench-infer clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs,airflow,kubeflow]'
	touch $@

install: $(VENV)/.installed ## build .venv with the pinned dependencies

pipeline: install ## run all six components: make pipeline [MANUAL_DIR=dir] [ARGS='--set k=v ...']
	$(PY) -m pipeline run $(OFFLINE) $(ARGS)

component: install ## run one component on the latest upstream artifacts: make component C=train [ARGS=...]
	@test -n "$(C)" || { echo "error: name the component, e.g. make component C=train" >&2; exit 2; }
	$(PY) -m pipeline run $(C) $(OFFLINE) $(ARGS)

nightly: install ## the scheduled retrain: make nightly [MANUAL_DIR=dir] [ARGS='--set ingest.extra_dir=...']
	$(PY) -m pipeline nightly $(OFFLINE) $(ARGS)

models: install ## list the served model versions
	$(PY) -m pipeline models

test: install ## run the test suite (needs ../shared/data/mnist, or MNIST_MIRROR=dir)
	$(PY) -m pytest

# NO_MKDOCS_2_WARNING: mkdocs-material prints a notice about its successor on every build.
docs: install ## build the documentation site into site/ (mkdocs, strict)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean: ## remove run output (artifacts/) but keep the environment
	rm -rf artifacts/runs artifacts/serving artifacts/backups

bench-models: install ## train every preset on full MNIST; table + artifacts/benchmarks/models/models.json
	$(PY) -m benchmarks.models $(OFFLINE) $(ARGS)

bench-accuracy: install ## the default model (or PRESETS='best resnet') with 3 seeds on full MNIST: per seed epochs, seconds, accuracy; mean and min
	$(PY) -m benchmarks.models --presets $(PRESETS) --seeds 1 2 3 --artifacts artifacts/benchmarks/accuracy $(OFFLINE) $(ARGS)

bench-train: install ## training speed on full MNIST vs model.fit on NumPy: make bench-train [ARGS='--presets best --epochs 3']
	$(PY) -m benchmarks.train $(OFFLINE) $(ARGS)

bench-cache: install ## wall time of a first, a fully cached and a train-only run: make bench-cache [ARGS='--set ingest.train_split=train[:3000]']
	$(PY) -m benchmarks.cache $(OFFLINE) $(ARGS)

bench-orchestrators: install ## one slice under pipeline run, airflow dags test and kfp.local: a fresh and a cached run each
	$(PY) -m benchmarks.orchestrators $(OFFLINE) $(ARGS)

bench-scale: install ## preprocess (Beam vs NumPy) and a train epoch on 1x/4x/10x MNIST: make bench-scale [ARGS='--sizes 1,4,10 --runner-modes']
	$(PY) -m benchmarks.scale $(if $(MANUAL_DIR),--mirror $(MANUAL_DIR)) $(ARGS)

bench-user-images: install ## accuracy of the served model on test digits re-rendered as users' photos
	$(PY) -m benchmarks.user_images $(ARGS)

bench-infer: install ## batch inference (Beam) against predict on users' photos: make bench-infer [ARGS='--sizes 1000,10000']
	$(PY) -m benchmarks.infer $(ARGS)
