# dsr-operator: set up, run the demo, run the tests. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOAK_MINUTES ?= 10

.PHONY: setup demo test test-fast test-netscaler test-cluster lint bench crds promtool image pause-image clean-image

setup: $(BIN)/dsr-operator

$(BIN)/dsr-operator: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

demo: setup
	$(BIN)/dsr-operator demo

## Every tier: unit, integration, netns (root), control plane, images and cluster (root; builds binaries,
## promtool and the images once).
test: setup controlplane promtool image
	DSR_REQUIRE_CONTROLPLANE=1 DSR_REQUIRE_CLUSTER=1 $(BIN)/python -m pytest
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## Unit and integration tiers only (seconds; no root, no Go).
test-fast: setup
	$(BIN)/python -m pytest tests/unit tests/integration

## The cluster tier alone: three real nodes (containerd, kubelet, kube-proxy) in network namespaces on the
## DSR lab's bridge (root; the Debian packages .ci/run installs). Images: every *.tar in $DSR_CLUSTER_IMAGES (default .cache/image).
test-cluster: setup controlplane image
	DSR_REQUIRE_CLUSTER=1 $(BIN)/python -m pytest -m cluster tests/cluster

## The conformance suite against your own NetScaler (a VPX or the free Express); README says what it
## creates. Without NETSCALER_URL it runs against the simulator.
##   make test-netscaler NETSCALER_URL=https://10.0.0.5 NETSCALER_PASSWORD_FILE=~/ns.password
## Optional: NETSCALER_USERNAME (nsroot), NETSCALER_CA_FILE or NETSCALER_INSECURE=1, NETSCALER_ENABLE_MBF=yes.
NETSCALER_VARS := NETSCALER_URL NETSCALER_PASSWORD_FILE NETSCALER_USERNAME NETSCALER_CA_FILE NETSCALER_INSECURE \
	NETSCALER_ENABLE_MBF
test-netscaler: setup
	$(foreach v,$(NETSCALER_VARS),$(v)='$($(v))') $(BIN)/python -m pytest tests/conformance -m netscaler -v

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

crds: setup
	$(BIN)/dsr-operator crd --output-dir crds

bench: setup controlplane
	$(BIN)/python bench/converge.py
	$(BIN)/python bench/agent_vips.py
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)
	$(BIN)/python bench/drain_lag.py
	$(BIN)/python bench/registry_latency.py
	$(BIN)/python bench/operator_scale.py

## promtool (Prometheus, pinned in tools/promtool/go.mod) for the chart's alert tests; cached in .cache/promtool.
promtool:
	bash tools/promtool/build.sh

## Container images without a registry (tools/image/build.sh; root, buildah, debootstrap, gcc, Go):
## the app image from the Dockerfile and the pause image, as archives in .cache/image/ for
## `ctr -n k8s.io images import`. Rebuilt only when their inputs change.
image:
	bash tools/image/build.sh

pause-image:
	bash tools/image/build.sh pause

clean-image:
	-command -v buildah >/dev/null && buildah rmi $$(buildah images --format '{{.Name}}:{{.Tag}}' \
		| grep -E '^(localhost/dsr-operator-base|$(shell awk '/^image:/{f=1;next} f&&$$1=="repository:"{print $$2;exit}' charts/dsr-operator/values.yaml)):') 2>/dev/null
	rm -rf .cache/image

include tools/controlplane/Makefile.fragment
