# `make demo` and `make test` work from a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# requirements.lock pins every package (`make lock` writes it from pyproject.toml); uv installs
# it, bootstrapped into the venv with pip. uv also reads the indexes pip is configured with
# (a local mirror or proxy), trying them before PyPI.
LOCK := requirements.lock
UV_VERSION := 0.13.8
UV := $(BIN)/python -m uv
PIP_INDEXES := $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
ifneq ($(PIP_INDEXES),)
export UV_EXTRA_INDEX_URL ?= $(PIP_INDEXES)
endif
ifneq ($(PIP_FIND_LINKS),)
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
endif
export UV_INDEX_STRATEGY ?= unsafe-best-match

.PHONY: install lock repro demo papers task-driven study-coco test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) pip install --compile-bytecode --python $(BIN)/python --no-deps -r $(LOCK)
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# After changing dependencies in pyproject.toml: pin them all again (Linux x86_64, Python 3.11,
# the torch/torchvision pair of constraints.txt, the exclusions of overrides.txt). The lock is
# complete, so `install` takes it as it is (--no-deps): nothing is resolved again.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) pip compile pyproject.toml --extra dev --constraints constraints.txt \
		--overrides overrides.txt --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o $(LOCK)

# After editing params.yaml: dvc.yaml follows it, then DVC reruns what changed.
repro: install
	$(BIN)/icmflow pipeline
	$(BIN)/dvc repro

demo: repro
	@echo
	@echo "RD table:  results/report/rd.md (and rd.csv)"
	@echo "BD-rate:   results/report/bd_rate.json"
	@echo "Plots:     results/report/*.png   (or: dvc plots show)"
	@cat results/report/rd.md

# The papers' codecs (TCM, scalable coding) and the task-driven objectives: DVC projects of
# their own (subrepos), too slow for the demo.
papers: install
	$(BIN)/icmflow --params papers/params.yaml pipeline
	cd papers && $(CURDIR)/$(BIN)/dvc repro

task-driven: install
	$(BIN)/icmflow --params task-driven/params.yaml pipeline
	cd task-driven && $(CURDIR)/$(BIN)/dvc repro

# The real-data study (README "Real data: COCO"): COCO images and detectors from ../shared beside
# the repository. One torch thread per process unless OMP_NUM_THREADS says otherwise: on the
# shared 2-core machine two threads trained 3x slower than one.
study-coco: install
	$(BIN)/icmflow --params studies/coco/params.yaml pipeline
	cd studies/coco && OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(CURDIR)/$(BIN)/dvc repro

# Two workers (pytest-xdist), one test file each at a time (module fixtures are built once), one
# thread each: the suite's DVC runs and trainings are mostly single-threaded.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/masks.py

clean:
	rm -rf data models results .dvc/tmp
