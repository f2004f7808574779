# Two commands on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HELM := $(VENV)/bin/helm
PYTHON ?= python3

.PHONY: run test lint typecheck unit redis-server promtool clean bench bench-cluster deploy-lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else \
	    echo "redis-server is not installed: install the Debian package redis-server (apt-get install redis-server) and retry" >&2; exit 1; \
	  fi; }

# promtool checks the alert rules (tests/test_alert_rules.py); Debian ships it in `prometheus`.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else \
	    echo "promtool is not installed: install the Debian package prometheus (apt-get install prometheus) and retry" >&2; exit 1; \
	  fi; }

run: $(STAMP) redis-server
	$(VENV)/bin/streamworker dev --demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) $(HELM) redis-server promtool
	$(VENV)/bin/pytest -q

# Real helm binary in the venv (Helm ships no PyPI/Debian package; see helm/tools/fetch_helm.py).
$(HELM): helm/tools/fetch_helm.py | $(STAMP)
	$(PY) helm/tools/fetch_helm.py $(HELM)

# Dockerfile, YAML and the Helm chart (default values and everything on).
deploy-lint: $(STAMP) $(HELM)
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/yamllint --strict .
	$(HELM) lint --strict helm/streamworker
	$(HELM) lint --strict helm/streamworker -f helm/streamworker/ci/everything-on-values.yaml
	$(HELM) template lint helm/streamworker -f helm/streamworker/ci/everything-on-values.yaml \
	  --api-versions keda.sh/v1alpha1 --api-versions monitoring.coreos.com/v1 >/dev/null

test: lint typecheck deploy-lint unit

# Benchmark against the peers (bench/README in README "Performance"). BENCH_ARGS=--quick etc.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) redis-server
	$(PY) -m bench $(BENCH_ARGS)

# Drain on one redis-server vs a local 3-master Redis Cluster (README "Scaling out").
bench-cluster: $(STAMP) redis-server
	$(PY) -m bench.cluster $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
