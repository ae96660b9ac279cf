# syntax=docker/dockerfile:1
# The dsr-operator image: one Python program with the subcommands `run` (operator), `agent` (node agent),
# `nitro-sim`, `plan`/`apply`, `crd` and `host-setup`. The Helm chart runs `run` in the Deployment and
# `agent` in the DaemonSet (as uid 0 with only CAP_NET_ADMIN; see charts/dsr-operator/templates/daemonset.yaml).
#
# Build and push (multi-arch, from the repository root):
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t ghcr.io/dsr-operator/dsr-operator:0.1.0 --push .
# or for the local architecture only:
#   docker build -t ghcr.io/dsr-operator/dsr-operator:0.1.0 . && docker push ghcr.io/dsr-operator/dsr-operator:0.1.0
# The tag is the chart's appVersion (charts/dsr-operator/Chart.yaml) and the package version (pyproject.toml).
#
# tests/controlplane/test_chart.py runs the project-wheel and install commands below on the host
# (no container engine needed) and checks that this file still contains them.

# PYTHON_IMAGE: any Debian-like image with python3 (>= 3.11) and its venv module. The default is Docker
# Hub's; tools/image/build.sh (`make image`) builds without a registry on a Debian base it makes itself
# (python3 + python3-venv, no pip outside a venv). Both stages therefore install into a venv.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Only for this stage's downloads (a CA bundle the builder mounts, e.g. behind a TLS-intercepting proxy).
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/dsr-operator/bin:$PATH
RUN python3 -m venv /opt/dsr-operator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The project's wheel, then wheels of everything it depends on, all in /wheels.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/dsr_operator-*.whl

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/dsr-operator/bin:$PATH
# Offline, from /wheels only; the venv's own pip and setuptools go again afterwards (nothing needs them).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/dsr-operator \
 && pip install --no-index --find-links /wheels dsr-operator \
 && pip uninstall --yes --quiet pip setuptools \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
USER 65532:65532
# 8080: Prometheus /metrics, 8081: kopf /healthz (operator).
EXPOSE 8080 8081
ENTRYPOINT ["dsr-operator"]
CMD ["--help"]
LABEL org.opencontainers.image.title="dsr-operator" \
      org.opencontainers.image.description="Direct Server Return load balancing on NetScaler, driven from Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
