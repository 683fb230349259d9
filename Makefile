# snnrm: the two commands that matter are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
BENCH_STAMP := $(VENV)/.bench-installed
# The C extension (setup.py): a change to it reinstalls, which rebuilds it.
NATIVE_SRC := setup.py snnrm/kubelet/_id_index.c
# Heavy Go-built tools (kubelet device manager harness, etcd, kube-apiserver, ...) are cached outside the repo,
# keyed by version, so a warm `make test` does not rebuild them.
export SNNRM_TOOLS_CACHE ?= $(HOME)/.cache/snnrm-tools

.PHONY: help install dev demo test unit lint fmt protos tools test-deps bench clean cluster cluster-down

help:
	@echo "make demo   run the daemon on simulated chips with an embedded kubelet stand-in (Ctrl-C to stop)"
	@echo "make test   install everything the tests need and run lint + the whole suite"
	@echo "make bench  run the benchmarks and print numbers against the targets"
	@echo "make lint   ruff, mypy --strict, import-linter, generated-stub freshness, the C extension's warnings"
	@echo "make cluster       a real single-node Kubernetes here (root): kubelet, containerd, snnrm by its chart"
	@echo "make cluster-down  stop it and remove everything it created"

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml $(NATIVE_SRC) | $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(NATIVE_SRC) | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(RUNTIME_STAMP)

# The experiments' PNG plots need matplotlib (the 'bench' extra).
$(BENCH_STAMP): pyproject.toml $(NATIVE_SRC) | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@ $(DEV_STAMP) $(RUNTIME_STAMP)

install: $(RUNTIME_STAMP)
dev: $(DEV_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/snnrm demo

protos: $(DEV_STAMP)
	$(BIN)/python scripts/gen_protos.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/gen_protos.py --check
	gcc -fsyntax-only -std=c11 -Wall -Wextra -Wpedantic -Werror \
	  -I"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" snnrm/kubelet/_id_index.c
	@test -z "$$(gofmt -l tests/e2e)" || { echo "gofmt needed:"; gofmt -l tests/e2e; exit 1; }

fmt: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

tools:
	bash scripts/build-tools.sh
	bash scripts/build-observability-tools.sh
	bash scripts/build-chart-tools.sh

unit: $(DEV_STAMP)
	$(BIN)/pytest tests/unit

# System packages the tests need (headless Chromium for the status page test); quick when already installed.
test-deps:
	bash scripts/install-test-deps.sh

# SNNRM_E2E_REQUIRE=1: a missing Go-built binary fails the e2e tests instead of skipping them.
test: lint tools test-deps
	SNNRM_E2E_REQUIRE=1 $(BIN)/pytest

# A real node (root): etcd, apiserver, controller-manager, scheduler, kubelet, kube-proxy, containerd + runc + CNI,
# the snnrm image built from the Dockerfile, the chart installed (scripts/cluster.sh; .cluster/kubeconfig).
cluster:
	bash scripts/cluster.sh up

cluster-down:
	bash scripts/cluster.sh down

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache *.egg-info build
