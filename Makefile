# Two commands: `make demo` and `make test`. Each creates .venv when missing and installs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-compat lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a lottery-ticket run on the embedded offline digits data (table + plots).
demo: $(STAMP)
	$(PY) -m experiments.lottery --config experiments/configs/lottery/digits_lenet.py --out runs/demo

# Two workers by default (the CI machine has 2 cores); each test file runs in one worker so
# module-scoped fixtures (compiled models, finished runs) are built once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# A quick local loop: everything but the notebooks, the model doctests and other slow items.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check conftest.py jaxsparse tests experiments benchmarks

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache

# The older stack Colab ships (jax 0.7.x, flax 0.11): the same tests against it.
COMPAT := .venv-compat
$(COMPAT)/.installed: pyproject.toml
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --upgrade pip
	$(COMPAT)/bin/python -m pip install -q "jax==0.7.2" "jaxlib==0.7.2" "flax>=0.11,<0.12" \
		"orbax-checkpoint<0.12" -e ".[dev]"
	touch $(COMPAT)/.installed

test-compat: $(COMPAT)/.installed
	$(COMPAT)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
