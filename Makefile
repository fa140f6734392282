# make demo   – create .venv, install prunekit, run the demo (a run folder + report.html)
# make test   – create/update .venv and run the default test suite
# make test-slow – the long experiment checks (marked `slow`)
# make bench  – the benchmark tables in benchmarks/
# make test-zoo – masked == compacted on every torchvision classifier and HuggingFace models built
#                 from configs, in a separate environment (.venv-zoo, torch 2.14.1 + torchvision)

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-slow test-zoo bench clean

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

# The model zoo needs torchvision, which is never a dependency of prunekit itself.
ZOO_VENV := .venv-zoo
ZOO_PY   := $(ZOO_VENV)/bin/python
ZOO_STAMP := $(ZOO_VENV)/.installed

$(ZOO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_PY) -m pip --disable-pip-version-check -q install torch==2.14.1 torchvision==0.29.1 transformers timm psutil onnx onnxscript torch-pruning
	$(ZOO_PY) -m pip --disable-pip-version-check -q install -e '.[test]'
	touch $(ZOO_STAMP)

test-zoo: $(ZOO_STAMP)
	$(ZOO_PY) -m pytest -q -p no:cacheprovider tests/zoo

bench: install
	for b in unstructured structured_speed criteria allocation lottery; do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(ZOO_VENV) runs build src/*.egg-info
