# make run    set up (virtual environment, pinned torch, data) and train configs/base.yaml
# make test   set up and run the checks: ruff, mypy, the test suite, the docs and their doctests
# make docs   build the HTML docs (warnings are errors) and run their examples as doctests
# make bench  the benchmarks: whole runs against a hand-written script, then epoch speed (a few minutes)
# make bench-sweep, make bench-distributed   sweep throughput; data-parallel epoch time
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint docs bench bench-sweep bench-distributed clean

setup:
	bash scripts/setup.sh

run: setup
	$(PY) -m fmnist_ignite configs/base.yaml

lint: setup
	$(VENV)/bin/ruff check fmnist_ignite tests benchmarks docs
	$(VENV)/bin/ruff format --check fmnist_ignite tests benchmarks docs
	$(VENV)/bin/mypy fmnist_ignite
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py   # imports point down, only app/ prints or exits

test: lint
	$(PY) -m pytest -n 2 --dist worksteal   # two workers; an idle one takes tests from the busy one
	$(MAKE) docs

docs: setup
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	$(VENV)/bin/sphinx-build -W --keep-going -q -b doctest -d docs/_build/doctrees docs docs/_build/doctest

bench: setup
	$(PY) benchmarks/end_to_end.py
	$(PY) benchmarks/epoch_speed.py

bench-sweep: setup
	$(PY) benchmarks/sweep_speed.py

bench-distributed: setup
	$(PY) benchmarks/distributed_speed.py

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .ruff_cache .mypy_cache
