# Two commands: `make demo` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# torch goes in first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
STAMP := $(VENV)/.ddlc-installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/ddlc train --config config.yaml

# CDK CLI for the infra tests (`npx cdk synth`); reinstalled only when package*.json change.
node_modules: package.json package-lock.json
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund
	@touch node_modules

test: venv node_modules
	$(VENV)/bin/pytest tests

bench: venv
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
