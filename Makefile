# The two commands a fresh machine needs (see README.md).
PY ?= python3

.PHONY: setup demo test
setup:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"

demo: setup
	$(PY) examples/quickstart.py

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal --durations=25 tests
