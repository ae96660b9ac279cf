#!/usr/bin/env bash
# Builds the container images a real cluster needs, without a registry, into .cache/image/ at the repo root:
#
#   dsr-operator.tar  the app image from the project's Dockerfile, tagged
#                     <values.yaml image.repository>:<Chart.yaml appVersion>
#   pause.tar         the pod sandbox image, compiled from Kubernetes' own build/pause/linux/pause.c
#                     (the k8s.io/kubernetes version pinned in tools/controlplane/go.mod), tagged
#                     registry.k8s.io/pause:<TAG in build/pause/Makefile>
#
# Both are `docker save`-style archives: `ctr -n k8s.io images import FILE`, `docker load -i FILE` and
# `buildah pull docker-archive:FILE` take them. Next to each, FILE.ref holds the image's name.
#
#   tools/image/build.sh [all|app|pause|base]      (default: all = app and pause)
#
# The app image is built with `docker buildx` when a Docker daemon with buildx answers (on
# python:3.11-slim-bookworm from Docker Hub), else with buildah on a Debian base made here: debootstrap
# (minbase + python3, python3-venv, ca-certificates) from the mirror apt uses, docs/man/locales stripped,
# packed as one layer by tools/image/pack.py and imported into buildah's local storage. Nothing is pulled.
# Each output carries a stamp of its hashed inputs (.cache/image/*.stamp) and is rebuilt only when they
# change, so a second run costs a second or two.
#
# Environment:
#   DSR_IMAGE_BUILDER    docker or buildah (default: docker if `docker buildx` works, else buildah)
#   DSR_IMAGE_DIR        output folder (default: <repo>/.cache/image)
#   DSR_IMAGE_CA_BUNDLE  CA bundle bind-mounted (read-only) into the build for pip, e.g. behind a
#                        TLS-intercepting proxy (default: /etc/ssl/certs/ca-certificates.crt if present)
#   DSR_IMAGE_MIRROR     Debian mirror for the base (default: the first bookworm URI in /etc/apt/sources.list*)
#   IMAGE_NICE           nice level of the heavy steps (default 10)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${DSR_IMAGE_DIR:-$ROOT/.cache/image}"
NICE="${IMAGE_NICE:-10}"
PYTHON="${PYTHON:-python3}"
CA_BUNDLE="${DSR_IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

# The Debian base: what goes into it. Changing any of these rebuilds it.
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_STRIP="usr/share/man usr/share/info usr/share/locale usr/share/lintian usr/share/linda var/cache/apt var/lib/apt/lists var/log etc/resolv.conf etc/hostname"
BASE_RECIPE="debootstrap --variant=minbase --include=$BASE_PACKAGES $BASE_SUITE; strip: $BASE_STRIP, docs but copyright; v1"

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing: apt-get install $2"; }
hash16() { sha256sum | cut -c1-16; }
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
stamp_ok() { [ -f "$OUT/$1" ] && [ -f "$OUT/$1.stamp" ] && [ "$(cat "$OUT/$1.stamp")" = "$2" ]; }
finish() { # NAME REF STAMP START: record the stamp and the name, report size and time
    echo "$3" > "$OUT/$1.stamp"
    echo "$2" > "$OUT/$1.ref"
    log "$2 -> $OUT/$1: $(mib "$OUT/$1"), built in $((SECONDS - $4)) s"
}

APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$ROOT/charts/dsr-operator/Chart.yaml")"
APP_REPOSITORY="$(awk '/^image:/ { inside = 1; next } inside && /^[^ ]/ { exit } inside && $1 == "repository:" { print $2; exit }' \
    "$ROOT/charts/dsr-operator/values.yaml")"
[ -n "$APP_VERSION" ] || die "cannot read appVersion from charts/dsr-operator/Chart.yaml"
[ -n "$APP_REPOSITORY" ] || die "cannot read image.repository from charts/dsr-operator/values.yaml"
APP_REF="$APP_REPOSITORY:$APP_VERSION"

choose_builder() {
    if [ -n "${DSR_IMAGE_BUILDER:-}" ]; then
        echo "$DSR_IMAGE_BUILDER"
    elif command -v docker >/dev/null && docker buildx version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        echo docker
    else
        echo buildah
    fi
}

# --- The Debian base (buildah only) -------------------------------------------------------------------

debian_mirror() {
    if [ -n "${DSR_IMAGE_MIRROR:-}" ]; then echo "$DSR_IMAGE_MIRROR"; return; fi
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    # One-line `deb URI bookworm main` entries, and deb822 stanzas (URIs: + Suites: bookworm).
    awk -v suite="$BASE_SUITE" '
        /^deb / { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i + 1) == suite) { print $i; exit } break } }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
        /^$/ { uri = "" }
    ' "${files[@]}" | head -1
}

BASE_ROOTFS=""
cleanup_rootfs() {
    [ -n "$BASE_ROOTFS" ] && [ -d "$BASE_ROOTFS" ] || return 0
    local m
    # debootstrap mounts /proc and /sys in the target while it runs; never leave them behind.
    for m in $(findmnt -rn -o TARGET | grep -F "$BASE_ROOTFS/" | sort -r); do umount -l "$m" || true; done
    rm -rf --one-file-system "$BASE_ROOTFS"
}
trap cleanup_rootfs EXIT

# Sets BASE_REF, the base image's name in buildah's storage, building and importing it when needed.
build_base() {
    need buildah buildah
    local mirror key tar start
    mirror="$(debian_mirror)"
    [ -n "$mirror" ] || die "no $BASE_SUITE mirror in /etc/apt/sources.list*: set DSR_IMAGE_MIRROR"
    key="$( { echo "$BASE_RECIPE $mirror $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null)"; cat "$HERE/pack.py"; } | hash16)"
    BASE_REF="localhost/dsr-operator-base:$key"
    tar="base-$key.tar"
    if ! stamp_ok "$tar" "$key"; then
        need debootstrap debootstrap
        [ "$(id -u)" = 0 ] || die "debootstrap needs root"
        start=$SECONDS
        log "Debian base: debootstrap $BASE_SUITE ($BASE_PACKAGES) from $mirror (about a minute)"
        mkdir -p "$OUT/debs"
        BASE_ROOTFS="$OUT/base-rootfs"
        cleanup_rootfs
        mkdir -p "$BASE_ROOTFS"
        nice -n "$NICE" debootstrap --variant=minbase --include="$BASE_PACKAGES" --components=main \
            --cache-dir="$OUT/debs" "$BASE_SUITE" "$BASE_ROOTFS" "$mirror" > "$OUT/debootstrap.log" 2>&1 \
            || { tail -n 20 "$OUT/debootstrap.log" >&2; die "debootstrap failed (log: $OUT/debootstrap.log)"; }
        cleanup_mounts_only
        local path
        for path in $BASE_STRIP; do
            if [ -d "$BASE_ROOTFS/$path" ]; then find "$BASE_ROOTFS/$path" -mindepth 1 -delete; else rm -f "$BASE_ROOTFS/$path"; fi
        done
        find "$BASE_ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        find "$BASE_ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -f "$OUT"/base-*.tar "$OUT"/base-*.tar.stamp "$OUT"/base-*.tar.ref
        nice -n "$NICE" "$PYTHON" "$HERE/pack.py" "$BASE_ROOTFS" "$OUT/$tar" --tag "$BASE_REF" --cmd '["python3"]' \
            --env LANG=C.UTF-8 --empty dev --empty proc --empty sys --empty run --empty tmp \
            --comment "debootstrap --variant=minbase --include=$BASE_PACKAGES $BASE_SUITE $mirror" >/dev/null
        cleanup_rootfs
        BASE_ROOTFS=""
        finish "$tar" "$BASE_REF" "$key" "$start"
    fi
    if ! buildah inspect --type image "$BASE_REF" >/dev/null 2>&1; then
        log "importing $BASE_REF into buildah's storage"
        buildah pull --quiet "docker-archive:$OUT/$tar" >/dev/null
        # Older bases of ours, if nothing uses them any more.
        local old
        for old in $(buildah images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/dsr-operator-base:' | grep -vxF "$BASE_REF"); do
            buildah rmi "$old" >/dev/null 2>&1 || true
        done
    fi
}

cleanup_mounts_only() {
    local m
    for m in $(findmnt -rn -o TARGET | grep -F "$BASE_ROOTFS/" | sort -r); do umount -l "$m" || true; done
}

# --- The app image ------------------------------------------------------------------------------------

app_inputs() { # everything the Dockerfile's build context lets through (.dockerignore), and the recipe
    (cd "$ROOT" && { find Dockerfile .dockerignore pyproject.toml README.md operator -type f \
        ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum
        sha256sum "$HERE/build.sh"; })
}

build_app() {
    local builder stamp start
    builder="$(choose_builder)"
    if [ "$builder" = buildah ]; then
        build_base
        stamp="$( { app_inputs; echo "$APP_REF buildah $BASE_REF"; } | hash16)"
    else
        stamp="$( { app_inputs; echo "$APP_REF docker"; } | hash16)"
    fi
    if stamp_ok dsr-operator.tar "$stamp"; then
        log "$APP_REF: up to date ($OUT/dsr-operator.tar, $(mib "$OUT/dsr-operator.tar"))"
        return
    fi
    start=$SECONDS
    mkdir -p "$OUT"
    rm -f "$OUT/dsr-operator.tar.tmp"
    if [ "$builder" = docker ]; then
        log "building $APP_REF with docker buildx"
        (cd "$ROOT" && nice -n "$NICE" docker buildx build --load -t "$APP_REF" .)
        docker save -o "$OUT/dsr-operator.tar.tmp" "$APP_REF"
    else
        local old volume=() certs=()
        old="$(buildah images --noheading --format '{{.ID}}' "$APP_REF" 2>/dev/null || true)"
        if [ -f "$CA_BUNDLE" ]; then
            # The build stage's pip trusts the host's CAs; a read-only bind mount, nothing of it is in the image.
            volume=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
            certs=(--build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
        fi
        log "building $APP_REF with buildah on $BASE_REF"
        (cd "$ROOT" && nice -n "$NICE" buildah bud --quiet --pull-never --network host --layers=false --format docker \
            "${volume[@]}" "${certs[@]}" --build-arg "PYTHON_IMAGE=$BASE_REF" -t "$APP_REF" .) >/dev/null
        buildah push --quiet "$APP_REF" "docker-archive:$OUT/dsr-operator.tar.tmp:$APP_REF" >/dev/null
        # The image this one replaced, now without a name.
        if [ -n "$old" ] && [ "$old" != "$(buildah images --noheading --format '{{.ID}}' "$APP_REF")" ]; then
            buildah rmi "$old" >/dev/null 2>&1 || true
        fi
    fi
    mv -f "$OUT/dsr-operator.tar.tmp" "$OUT/dsr-operator.tar"
    finish dsr-operator.tar "$APP_REF" "$stamp" "$start"
}

# --- The pause image ----------------------------------------------------------------------------------

build_pause() {
    need go golang-go
    need gcc "gcc libc6-dev"
    local version info dir time tag stamp start rootfs
    version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' \
        "$ROOT/tools/controlplane/go.mod" | head -1)"
    [ -n "$version" ] || die "cannot read the k8s.io/kubernetes version from tools/controlplane/go.mod"
    info="$(cd "$ROOT/tools/controlplane" && go mod download -json "k8s.io/kubernetes@$version")"
    dir="$(echo "$info" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    time="$(echo "$info" | "$PYTHON" -c 'import datetime, json, sys
info = json.load(open(json.load(sys.stdin)["Info"]))
print(int(datetime.datetime.fromisoformat(info["Time"].replace("Z", "+00:00")).timestamp()))')"
    [ -f "$dir/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in $dir"
    tag="$(sed -n 's/^TAG ?= *//p' "$dir/build/pause/Makefile")"
    [ -n "$tag" ] || die "cannot read TAG from $dir/build/pause/Makefile"
    local ref="registry.k8s.io/pause:$tag"
    stamp="$( { echo "$ref k8s.io/kubernetes@$version $(gcc --version | head -1)"; cat "$dir/build/pause/linux/pause.c" "$HERE/pack.py"; } | hash16)"
    if stamp_ok pause.tar "$stamp"; then
        log "$ref: up to date ($OUT/pause.tar, $(mib "$OUT/pause.tar"))"
        return
    fi
    start=$SECONDS
    mkdir -p "$OUT"
    rootfs="$(mktemp -d "$OUT/.pause.XXXXXX")"
    # The flags of build/pause/Makefile (CFLAGS), plus -s: a static binary that only waits for signals.
    gcc -Os -Wall -Werror -static -s "-DVERSION=v$tag-k8s.io/kubernetes@$version" \
        -o "$rootfs/pause" "$dir/build/pause/linux/pause.c"
    chmod 0755 "$rootfs" "$rootfs/pause"
    "$PYTHON" "$HERE/pack.py" "$rootfs" "$OUT/pause.tar" --tag "$ref" --entrypoint '["/pause"]' --user 65535:65535 \
        --mtime "$time" --comment "gcc -static build/pause/linux/pause.c (k8s.io/kubernetes@$version)" >/dev/null
    rm -rf "$rootfs"
    finish pause.tar "$ref" "$stamp" "$start"
}

case "${1:-all}" in
    all) build_app; build_pause ;;
    app) build_app ;;
    pause) build_pause ;;
    base) [ "$(choose_builder)" = buildah ] || log "note: the Debian base is only used with buildah"; build_base ;;
    *) die "usage: $0 [all|app|pause|base]" ;;
esac
