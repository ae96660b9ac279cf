#!/usr/bin/env bash
# Run test tiers N times in a row with both cores busy (stress-ng --cpu <cores>), stop at the first failure.
#   tools/under-load.sh [RUNS] [pytest args...]    default: 10 runs of tests/netns tests/controlplane
# Prints one line per run and a summary; exits non-zero if any run failed. Needs stress-ng (Debian package).
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
shift || true
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(tests/netns tests/controlplane)
command -v stress-ng >/dev/null || { echo "under-load: stress-ng is missing: apt-get install stress-ng" >&2; exit 2; }
stress-ng --cpu "$(nproc)" --quiet &
stress=$!
trap 'kill "$stress" 2>/dev/null; wait "$stress" 2>/dev/null' EXIT
logs="$(mktemp -d)"
passed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if DSR_REQUIRE_CONTROLPLANE=1 DSR_REQUIRE_CLUSTER=1 .venv/bin/python -m pytest -q -p no:cacheprovider "${args[@]}" >"$logs/run-$i.log" 2>&1; then
    passed=$((passed + 1))
    echo "run $i/$runs: passed in $(( $(date +%s) - start )) s ($(tail -1 "$logs/run-$i.log"))"
  else
    echo "run $i/$runs: FAILED in $(( $(date +%s) - start )) s; log: $logs/run-$i.log"
    grep -E "^(FAILED|ERROR)" "$logs/run-$i.log" | head -20
    break
  fi
done
echo "under load (stress-ng --cpu $(nproc)): $passed of $runs runs passed; logs in $logs"
[ "$passed" -eq "$runs" ]
