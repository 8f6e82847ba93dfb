# The two commands of the README: `make demo` and `make test`. Each builds its own
# virtual environment on first use (a fresh machine needs only python3 >= 3.11).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test test-fast lint bench bench-litellm clean

# The runtime alone (what `make demo` needs): no test, lint or bench packages.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# The runtime with the test and lint tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/nudge-gateway demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The in-process tests (api, proxy, policy, routing, telemetry, config, errors): under ~20 s, no processes
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q tests/api tests/proxy tests/policy tests/routing tests/telemetry tests/test_config.py tests/test_errors.py

# ruff and mypy on gateway/, and the import contracts of pyproject.toml (the one-way request path)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gateway
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The overhead benchmark (bench/overhead.py, ~4 minutes on 2 cores; needs wrk, nginx, taskset)
# against nginx and LiteLLM; LiteLLM goes into its own venv, never into the gateway's.
LITELLM_VENV = bench/.litellm-venv

$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install -q 'litellm[proxy]'

bench-litellm: $(LITELLM_VENV)/bin/litellm

$(VENV)/.bench: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench $(LITELLM_VENV)/bin/litellm
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
