#!/usr/bin/env bash
# Instructions per relayed request, per thread and in all, at one connection: the relay
# (demo, SQLite, memory limiter) under callgrind, counters zeroed after a warm-up.
# Counts instructions, not time, so it is repeatable on a busy machine.
#   CARGO_TARGET_DIR=... SECONDS_PER_RUN=5 [BIN_DIR=...] bash benches/load/callgrind.sh [out-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SECS="${SECONDS_PER_RUN:-5}"
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
UP=127.0.0.1:9201 RELAY=127.0.0.1:9202
# BIN_DIR: already-built binaries to measure instead of building this checkout's.
if [ -n "${BIN_DIR:-}" ]; then BIN="$BIN_DIR"; else
  cargo build --release -p relay-server --bins >&2
  BIN="$CARGO_TARGET_DIR/release"
fi
KEY="rk_live_benchbenchbenchbenchbenchbenchbenchbenchben"
BODY='{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello, relay"}]}'
POLICY='{"concurrency":4096,"rate_windows":[{"window_secs":60,"max_requests":100000000}],"budgets":[{"period":"daily","cap":{"amount":"1000000","currency":"USD"}}]}'
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
"$BIN/relay-loadgen" upstream --bind "$UP" >/dev/null & PIDS+=($!)
RELAY_DEMO=true RELAY_DEMO_KEY="$KEY" RELAY_DEMO_UPSTREAM="http://$UP" RELAY_DEMO_POLICY="$POLICY" \
  DATABASE_URL="sqlite://$OUT/relay.db" RELAY_BIND="$RELAY" RUST_LOG=warn \
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$OUT/cg.%p" \
  "$BIN/relay-server" >/dev/null 2>"$OUT/relay.log" & RP=$!; PIDS+=($RP)
for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/${RELAY%:*}/${RELAY#*:}") 2>/dev/null && break; sleep 0.2; done
load() { "$BIN/relay-loadgen" run --url "http://$RELAY/v1/messages" --connections 1 --seconds "$1" \
  --header "x-api-key: $KEY" --header "anthropic-version: 2023-06-01" --body "$BODY"; }
load 3 >/dev/null
callgrind_control -z "$RP" >/dev/null
RESULT="$(load "$SECS")"
callgrind_control -d "$RP" >/dev/null
N="$(echo "$RESULT" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')"
echo "$RESULT"
[ "${N:-0}" -gt 0 ] || { echo "no request was served; see $OUT/relay.log" >&2; exit 1; }
# The dump is written as cg.PID.1-THREAD, one file per thread.
for f in "$OUT"/cg."$RP".1-*; do
  echo "$(basename "$f") $(sed -n 's/^summary: //p' "$f")"
done | awk -v n="$N" -v out="$OUT" '$2 > 0 { printf "thread %s: %d instructions per request\n", $1, $2 / n; t += $2 }
  END { printf "total: %d instructions per request (%s files in %s)\n", t / n, NR, out }'
