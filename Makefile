# One entry point for developers and CI. `make test` installs whatever is missing (Debian
# packages, the Python environment, the Go-built control plane) and runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS := workloads,train,index,serving,dev
# The Python environment is rebuilt only when pyproject.toml changes.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: test deps system-deps realnode-deps python-deps testbed lint typecheck unit demo crds images clean

test: deps lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

deps: system-deps realnode-deps python-deps testbed

# Debian packages the tests start for real. Installed only when missing (CI runs as root).
system-deps:
	@command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || { \
	  echo "installing redis-server (Debian)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server redis-tools >/dev/null; }

# What the testbed's real node runs (tests/testbed/real_node.py): containerd, runc, the CNI
# plugins and iptables, and gcc for its static pause binary. Installed only when missing.
REALNODE_PACKAGES := containerd runc containernetworking-plugins iptables gcc libc6-dev
realnode-deps:
	@command -v containerd >/dev/null && command -v runc >/dev/null && command -v iptables >/dev/null \
	  && [ -x /usr/lib/cni/bridge ] && command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || { \
	  echo "installing $(REALNODE_PACKAGES) (Debian)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(REALNODE_PACKAGES) >/dev/null; }

python-deps: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	# MovieLens-100k ships as package data of the recbole wheel; only its data files are used,
	# and its own dependencies (torch and a dozen more) are not wanted: install it alone.
	$(PY) -m pip install -q --no-deps 'recbole==1.2.1'
	@rm -f $(VENV)/.installed-* && touch $@

# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok and helm (and the
# real node's kubelet, kube-proxy and pause), built
# from Go modules once and cached by version under ~/.cache/recsys-operator (see tests/testbed).
testbed:
	@bash tests/testbed/build.sh all >/dev/null

lint: python-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: python-deps
	$(VENV)/bin/mypy

# Fast feedback without the control plane: pure tests only.
unit: python-deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The closed loop on this machine: control plane, Redis, the operator, MovieLens-100k through
# materialization, training, evaluation, indexing and promotion (demo/run_demo.py).
demo: deps
	$(PY) demo/run_demo.py $(DEMO_ARGS)

# The four container images (operator, workloads, trainer, triton), tagged as the chart
# defaults them; an image whose inputs did not change is not rebuilt (images/README.md).
# Installs podman, buildah, runc and debootstrap when missing. IMAGES=operator limits the set.
images:
	@bash images/build.sh $(IMAGES)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
