# Lake: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LAKE := $(BIN)/lake
ROOT ?= data
# pytest arguments; CI adds a bounded slow-test run with `make test-slow`.
PYTEST_ARGS ?=
SLOW_ITERATIONS ?= 5
SLOW_EXAMPLES ?= 40
# make chaos: how long, and the seed of every random choice (docs/RELIABILITY.md).
CHAOS_MINUTES ?= 2
CHAOS_SEED ?= 1

.PHONY: install demo test test-slow chaos bench bench-smoke lint typecheck clean spark dashboard

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## demo: a demo lake under data/: init, 4 producers at once, load, and what was loaded.
## ROOT=elsewhere makes it there, with a copy of data/lake.toml and data/contracts.
demo: install
	test -f $(ROOT)/lake.toml || { mkdir -p $(ROOT) && cp data/lake.toml $(ROOT)/ && \
		cp -R data/contracts $(ROOT)/; }
	$(LAKE) --root $(ROOT) init
	$(BIN)/python -m staging.demo --root $(ROOT) --producers 4
	$(LAKE) --root $(ROOT) load || test $$? -eq 3   # 3: something was quarantined (on purpose)
	$(LAKE) --root $(ROOT) query "SELECT kind, count(*) AS events, count(DISTINCT _lake_partition) AS months FROM events GROUP BY kind ORDER BY kind"
	$(LAKE) --root $(ROOT) query "SELECT table_name, status, count(*) AS runs, sum(rows_loaded) AS rows FROM meta.staged_runs GROUP BY ALL ORDER BY ALL"

## dashboard: the health dashboard of ROOT on http://127.0.0.1:8501 (docs/DASHBOARD.md).
dashboard: install
	$(BIN)/python -m pip install --quiet -e '.[dashboard]'
	$(LAKE) --root $(ROOT) dashboard

## test: the test suite (slow crash/soak tests excluded; see test-slow).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-slow: the slow crash/soak tests, bounded by SLOW_ITERATIONS.
test-slow: install
	LAKE_SLOW_ITERATIONS=$(SLOW_ITERATIONS) LAKE_SLOW_EXAMPLES=$(SLOW_EXAMPLES) \
		$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

## chaos: producers, loaders, compaction, cleanup and readers at once, killed at random, then
## every invariant checked against the reference model (docs/RELIABILITY.md).
chaos: install
	$(BIN)/python -m benchmarks.chaos --minutes $(CHAOS_MINUTES) --seed $(CHAOS_SEED)

## bench: benchmarks against raw DuckDB and dlt; writes docs/BENCHMARKS.md (several minutes).
bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.bench --size full --repeat 3

## bench-smoke: the small size, once, without touching the docs (under two minutes).
bench-smoke: install
	$(BIN)/python -m benchmarks.bench --size small --repeat 1 --no-write --skip-dlt

## spark: a separate venv with pyspark for the Spark reader test of exports (-m slow;
## docs/EXPORT.md). Never in Lake's venv: pandera imports pyspark.pandas whenever it is there.
SPARK_VENV ?= .venv-spark
spark: $(SPARK_VENV)/.installed

$(SPARK_VENV)/.installed:
	test -d $(SPARK_VENV) || $(PYTHON) -m venv $(SPARK_VENV)
	$(SPARK_VENV)/bin/python -m pip install --quiet 'pyspark>=4.3'
	touch $@

lint: install
	$(BIN)/ruff check lakehouse staging loader tests benchmarks

typecheck: install
	$(BIN)/mypy lakehouse staging loader

## clean: remove the demo lake's state (keeps data/lake.toml and data/contracts) and caches.
clean:
	rm -rf $(ROOT)/staging $(ROOT)/quarantine $(ROOT)/archive $(ROOT)/warehouse
	rm -rf .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
