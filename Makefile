# The two commands a new user runs: `make demo` (the main job on the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Spark listens on the loopback address only
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo test test-fast bench-cpu clean

setup:
	@VENV=$(VENV) scripts/setup_env.sh

demo: setup
	$(PY) -m vig_udf.cli demo --config conf/demo.yaml

# two test processes (pytest-xdist), each with its own Spark session; a test file stays in one process, so the
# files' module-scoped lakes and servers are made once
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not spark"

bench-cpu: setup
	$(PY) benchmarks/score_cpu.py

clean:
	rm -rf $(VENV) .demo .pytest_cache
