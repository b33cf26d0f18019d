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

.PHONY: venv sysdeps horovod demo test bench gpu-check mutate clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/ddlc train --config config.yaml

# System tools the tests run for real, installed only when missing:
# Prometheus + promtool (Debian package `prometheus`), Node.js/npm for the CDK CLI, Chromium for the
# dashboard's browser tests, sshd/ssh + iproute2 for `ddlc doctor` and the two-host `ddlc launch` tests
# (network namespaces), pdsh for DeepSpeed's own multi-node runner, a C++ compiler and cmake for `make horovod`,
# Slurm (slurmctld, slurmd, the client commands) and munge for the real-cluster tests in tests/scheduler.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
sysdeps:
	@missing=""; \
	[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	[ -x /usr/bin/prometheus-alertmanager ] || missing="$$missing prometheus-alertmanager"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v ssh >/dev/null || missing="$$missing openssh-client"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v pdsh >/dev/null || missing="$$missing pdsh"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	[ -x /usr/sbin/slurmctld ] || missing="$$missing slurmctld"; \
	[ -x /usr/sbin/slurmd ] || missing="$$missing slurmd"; \
	command -v sbatch >/dev/null || missing="$$missing slurm-client"; \
	[ -x /usr/sbin/munged ] || missing="$$missing munge"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; fi

# CDK CLI for the infra tests (`npx cdk synth`); reinstalled only when package*.json change.
node_modules: package.json package-lock.json | sysdeps
	npm ci --no-audit --no-fund
	@touch node_modules

# Horovod 0.28.1 built against the venv's torch (C++17 patch, gloo only); a no-op once `import horovod.torch` works.
horovod: venv sysdeps
	bash scripts/build_horovod.sh $(PY)

# Two pytest-xdist workers: the multi-process tests mostly wait (rendezvous, ssh, Slurm), so one leaves a core idle.
# Which tests share a worker (the namespace hosts, CDK synth, a file's fixtures): tests/conftest.py. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: venv sysdeps node_modules horovod
	$(VENV)/bin/pytest tests $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

# Mutation testing, not part of `make test` (docs/testing.md): mutmut over the modules and fast tests named in
# pyproject [tool.mutmut], a per-module score, then the alert-rule mutator against the promtool tests.
# A subset: make mutate MUTANTS="ddlc.checkpoint.retention*"
MUTATE_CHILDREN ?= 2
mutate: venv
	@$(PY) -c "import mutmut" 2>/dev/null || $(PIP) install -e ".[$(EXTRAS),mutate]"
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) $(MUTANTS)
	$(PY) scripts/mutation_score.py
	$(PY) scripts/mutate_rules.py

gpu-check: venv
	PYTHON=$(PY) bash scripts/gpu_check.sh

bench: venv
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/checkpoint.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
