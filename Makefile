# Two commands: `make demo` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# torch goes in first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,monitor
STAMP := $(VENV)/.ddlc-installed

.PHONY: venv sysdeps demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/ddlc train --config config.yaml

# System tools the tests run for real: Prometheus + promtool (Debian/Ubuntu package `prometheus`).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sysdeps:
	@if [ ! -x /usr/bin/promtool ]; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

test: venv sysdeps
	$(VENV)/bin/pytest tests

bench: venv
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
