# The README's two commands. Both run scripts/install.sh first (idempotent).
PY := .venv/bin/python

.PHONY: install demo test test-fast lint
install:
	./scripts/install.sh

demo: install
	$(PY) -m ttt_kd_ros.tools.demo

test: install
	$(PY) -m pytest -m "not gpu" test

test-fast: install
	$(PY) -m pytest -m "not gpu and not slow" test

lint: install
	$(PY) -m ruff check .
