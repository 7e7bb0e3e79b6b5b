# Two commands on a fresh machine: `make demo` (the mini study) and `make test`.
# Both create or reuse .venv; a repeated run skips the install (stamp file).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

# coco-mini is found through ANONBENCH_COCO_MINI; point it at ../shared when that copy exists.
SHARED_COCO_MINI := $(abspath ../shared/data/coco-mini)
ANONBENCH_COCO_MINI ?= $(if $(wildcard $(SHARED_COCO_MINI)/SHA256SUMS),$(SHARED_COCO_MINI),)
export ANONBENCH_COCO_MINI

.PHONY: install demo test lint pipeline mlflow-ui dp2-env

# The DeepPrivacy2 environment (docker/dp2/install.sh, the same definition the DP2 image uses):
# anonbench plus torch, DP2 and detectron2/DensePose built from the pinned source archives, from
# ../shared/sources where that copy exists, else (DP2_SOURCES=download) from GitHub at the same
# commits. detectron2 is compiled into DP2_WHEELHOUSE, where the image build finds it again.
DP2_VENV := .venv-dp2
DP2_STAMP := $(DP2_VENV)/.installed
SHARED_DP2_SOURCES := $(abspath ../shared/sources)
DP2_SOURCES ?= $(if $(wildcard $(SHARED_DP2_SOURCES)/SHA256SUMS),$(SHARED_DP2_SOURCES),download)
export DP2_SOURCES
DP2_WHEELHOUSE := build/dp2-inputs/wheels
DP2_INPUTS := requirements/dp2-requirements.txt requirements/dp2-constraints.txt requirements/dp2-sources.txt \
	docker/dp2/install.sh docker/dp2/sources.py

# The example anonymizer plugin (docs/plugins.md): the tests run a study with it.
EXAMPLE_PLUGIN := examples/anonbench-plugin-inpaint

$(STAMP): pyproject.toml $(CONSTRAINTS) $(EXAMPLE_PLUGIN)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the release whose wheels the machines carry (shared/notes/environment.md)
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[train,orchestrate,privacy,dev]'
	$(BIN)/pip install -q -c $(CONSTRAINTS) --no-deps -e $(EXAMPLE_PLUGIN)
	# ultralytics pulls the GUI OpenCV, which shares the cv2 folder with the headless build we want
	$(BIN)/pip uninstall -q -y opencv-python
	$(BIN)/pip install -q --force-reinstall --no-deps "$$(grep '^opencv-python-headless==' $(CONSTRAINTS))"
	touch $@

install: $(STAMP)

$(DP2_STAMP): pyproject.toml $(CONSTRAINTS) $(DP2_INPUTS)
	test -x $(DP2_VENV)/bin/python || $(PYTHON) -m venv $(DP2_VENV)
	$(DP2_VENV)/bin/pip install -q --upgrade pip
	# torch, its CUDA libraries and triton (5.3 GB) as hard links to .venv's identical copy when there is one
	if [ -x $(BIN)/python ]; then $(BIN)/python docker/dp2/seed_venv.py $(DP2_VENV)/bin/python torch torchvision; fi
	$(DP2_VENV)/bin/pip install -q -c $(CONSTRAINTS) -c requirements/dp2-constraints.txt -e '.[privacy,dev]'
	DP2_WHEELHOUSE=$(DP2_WHEELHOUSE) docker/dp2/install.sh $(DP2_VENV)/bin/python $(DP2_VENV)/src
	touch $@

dp2-env: $(DP2_STAMP)

# The study as `dvc repro` (dvc.yaml): a second run with nothing changed is a no-op.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Compile the KFP study pipeline (pipelines/study.py) with pipelines/cluster.yaml for a profile
# (`make pipeline PROFILE=paper`; the profile decides which fan-outs exist); a build product.
PROFILE ?= mini
pipeline: install
	$(BIN)/python -m pipelines.study --profile $(PROFILE) --output pipelines/compiled/study.yaml

# Browse the demo's MLflow runs (the local store mlflow.db) at http://127.0.0.1:$(MLFLOW_PORT); prints the
# address of the runs table with anonbench's default columns (docs/tracking.md).
MLFLOW_PORT ?= 5000
mlflow-ui: install
	-@$(BIN)/anonbench tracking-url --set tracking.uri=sqlite:///mlflow.db \
		--set report.tracking_ui=http://127.0.0.1:$(MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

# Container images with immutable tags <version>-<git sha> (docker/build.sh; docs/containers.md).
.PHONY: images
images:
	docker/build.sh cpu train

lint: install
	$(BIN)/ruff check src tests benchmarks components pipelines docker examples
	$(BIN)/ruff format --check src tests benchmarks components pipelines docker examples
	$(BIN)/mypy

# Everything but the tests that need DeepPrivacy2, then those (marker dp2, files tests/*/test_dp2*.py)
# in its environment, which has neither Ultralytics nor KFP to collect the rest with.
test: lint dp2-env
	$(BIN)/pytest -m "not dp2"
	$(DP2_VENV)/bin/pytest -m dp2 tests/*/test_dp2*.py
