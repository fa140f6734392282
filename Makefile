# make demo   – create .venv, install prunekit, run the demo (a run folder + report.html)
# make test   – create/update .venv and run the default test suite
# make test-slow – the long experiment checks (marked `slow`)
# make bench  – the benchmark tables in benchmarks/

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on this machine's disk; pyproject only asks torch>=2.4,
# so users elsewhere keep their own build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/prunekit demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/unstructured.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
