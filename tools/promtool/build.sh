#!/usr/bin/env bash
# Builds promtool (github.com/prometheus/prometheus/cmd/promtool, the version pinned in go.mod here)
# into .cache/promtool/bin/ at the repo root, for `promtool test rules` on the chart's alerts
# (tests/controlplane/test_chart_observability.py). Only cmd/promtool is compiled.
#
# Rebuilt only when the binary is missing or its version stamp (bin/.stamps/promtool) differs,
# so a second run costs nothing.
#
# Environment:
#   DSR_PROMTOOL_BIN   output folder (default: <repo>/.cache/promtool/bin)
#   PROMTOOL_JOBS      go build -p (default 2; the machine has 2 cores)
#   PROMTOOL_NICE      nice level for the Go build (default 10)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${DSR_PROMTOOL_BIN:-$ROOT/.cache/promtool/bin}"
STAMPS="$BIN/.stamps"
JOBS="${PROMTOOL_JOBS:-2}"
NICE="${PROMTOOL_NICE:-10}"

log() { printf '[promtool] %s\n' "$*" >&2; }
die() { printf '[promtool] error: %s\n' "$*" >&2; exit 1; }

VERSION="$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" {print $3}' "$HERE/go.mod" | head -1)"
[ -n "$VERSION" ] || die "cannot read the github.com/prometheus/prometheus version from $HERE/go.mod"
command -v go >/dev/null || die "go is not installed (needs Go >= $(awk '$1=="go"{print $2}' "$HERE/go.mod"))"

mkdir -p "$BIN" "$STAMPS"
stamp="github.com/prometheus/prometheus@$VERSION $(go env GOVERSION) $(sha256sum "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16)"
if [ -x "$BIN/promtool" ] && [ -f "$STAMPS/promtool" ] && [ "$(cat "$STAMPS/promtool")" = "$stamp" ]; then
    log "promtool $VERSION: up to date"
    exit 0
fi

start=$SECONDS
log "building promtool from github.com/prometheus/prometheus $VERSION with $(go env GOVERSION) (-p $JOBS, nice $NICE)"
(cd "$HERE" && CGO_ENABLED=0 nice -n "$NICE" go build -mod=readonly -p "$JOBS" -trimpath \
    -ldflags "-s -w" -o "$BIN/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool)
mv -f "$BIN/promtool.tmp" "$BIN/promtool"
echo "$stamp" > "$STAMPS/promtool"
log "promtool in $BIN ($((SECONDS - start))s)"
