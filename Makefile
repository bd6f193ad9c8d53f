# Two set-up commands a newcomer needs: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt pins torch to the CPU build that this machine and CI resolve locally
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raymlops demo

test: $(STAMP)
	$(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py   # needs wrk or hey (installs wrk with apt-get when root)
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_freshness.py

lint: $(STAMP)
	$(BIN)/ruff check raymlops tests benchmarks

clean:
	rm -rf .raymlops .pytest_cache
