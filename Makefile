# The two commands of the README: `make demo` and `make test`. Each builds its own
# virtual environment on first use (a fresh machine needs only python3 >= 3.11).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test bench bench-litellm clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nudge-gateway demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The overhead benchmark (bench/overhead.py, ~4 minutes on 2 cores; needs wrk, nginx, taskset)
# against nginx and LiteLLM; LiteLLM goes into its own venv, never into the gateway's.
LITELLM_VENV = bench/.litellm-venv

$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install -q 'litellm[proxy]'

bench-litellm: $(LITELLM_VENV)/bin/litellm

bench: $(VENV)/.installed $(LITELLM_VENV)/bin/litellm
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
