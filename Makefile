# Two commands on a fresh Debian machine with Python 3.11:
#   make run   - install, then serve the built-in demo model (eaas/model/demo) and stream a completion
#   make test  - install everything (Python deps, redis-server, the Kubernetes testbed, helm) and run all tests
#                (tests/cluster starts a single-node cluster with scripts/k8s-testbed.sh: needs root)
#   make test-cluster - only the cluster tier (real pods), keeping the cluster up afterwards
VENV ?= .venv
PY := $(VENV)/bin/python
# -P: never put the working directory on sys.path (our operator/ folder would shadow the stdlib module)
PIP := $(PY) -P -m pip

.PHONY: install test-deps test test-cluster run protos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

# k8s-testbed.sh build: the five k8s commands (cached in ~/.cache/eaas), containerd, runc, CNI plugins,
# kubectl, a static pause image, mmdebstrap and buildah for the cluster tier's images.
test-deps: install
	bash scripts/install-redis.sh
	bash scripts/install-helm.sh
	bash scripts/k8s-testbed.sh build

test: install test-deps
	$(VENV)/bin/pytest

test-cluster: install test-deps
	EAAS_K8S_KEEP=1 $(VENV)/bin/pytest tests/cluster

run: install
	$(VENV)/bin/eaas up --demo

protos: install
	$(PY) -P protos/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
