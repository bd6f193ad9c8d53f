# Two set-up commands a newcomer needs: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

# Servers the tests run for real, never skipped: installed with apt-get when missing (as root, as CI runs).
DEB_PACKAGES := redis-server postgresql chromium

.PHONY: demo test test-fast bench lint clean system-deps

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt pins torch to the CPU build that this machine and CI resolve locally
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raymlops demo

system-deps:
	@for p in $(DEB_PACKAGES); do { command -v $$p || dpkg -s $$p; } >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $$p (apt-get)"; \
	    apt-get install -y -q $$p >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $$p >/dev/null; }; \
	  else echo "missing $$p: install it (sudo apt-get install $$p); the tests that use it fail without it" >&2; fi; \
	done

test: $(STAMP) system-deps
	$(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

test-fast: $(STAMP) system-deps
	$(BIN)/python -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py   # needs wrk or hey (installs wrk with apt-get when root)
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_freshness.py
	$(BIN)/python benchmarks/bench_quality.py

lint: $(STAMP)
	$(BIN)/ruff check raymlops tests benchmarks

clean:
	rm -rf .raymlops .pytest_cache
