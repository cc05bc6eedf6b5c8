# `make demo` and `make test` work from a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

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

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/masks.py

clean:
	rm -rf data models results .dvc/tmp
