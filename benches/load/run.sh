#!/usr/bin/env bash
# Load benchmark of the relay gateway, run by hand (not in CI), on one machine:
#   (a) direct calls to the demo upstream stand-in,
#   (b) the same calls through nginx as a plain reverse proxy with upstream keep-alive,
#   (c) the full relay stack (auth, admission, relay, metering) on the memory limiter,
#   (d) the same on Redis, with Redis commands per relayed request from INFO commandstats.
# Prints throughput and p50/p99 latency with 32 connections and with 1, and the relay's
# peak RSS. Traffic stays on 127.0.0.1; every run is bounded in time.
#
#   benches/load/run.sh            # SECONDS_PER_RUN=10 CONNECTIONS=32 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/targets/server}"
SECS="${SECONDS_PER_RUN:-10}"
CONNS="${CONNECTIONS:-32}"
REDIS_PORT="${REDIS_PORT:-6390}"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
UP=127.0.0.1:9101 NGINX=127.0.0.1:9102 MEM=127.0.0.1:9103 RED=127.0.0.1:9104
KEY="rk_live_benchbenchbenchbenchbenchbenchbenchbenchben"
BODY='{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello, relay"}]}'
# Generous caps that are still counted on every request: a window, a budget, a lease.
POLICY='{"concurrency":4096,"rate_windows":[{"window_secs":60,"max_requests":100000000}],"budgets":[{"period":"daily","cap":{"amount":"1000000","currency":"USD"}}]}'

if ! command -v nginx >/dev/null; then
  echo "installing nginx" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >/dev/null || {
    apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >/dev/null; }
fi
cargo build --release -p relay-server --bins >&2
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }
load() { # name url conns
  "$BIN/relay-loadgen" run --url "$2" --connections "$3" --seconds "$SECS" \
    --header "x-api-key: $KEY" --header "anthropic-version: 2023-06-01" --body "$BODY" | sed "s/^/$1 conns=$3 /"
}

"$BIN/relay-loadgen" upstream --bind "$UP" >/dev/null & PIDS+=($!)
wait_port "$UP"

cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream demo { server $UP; keepalive 256; keepalive_requests 10000000; }
  server {
    listen $NGINX;
    keepalive_requests 10000000;
    location / {
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$WORK/nginx.conf"
wait_port "$NGINX"

start_relay() { # bind redis-url-or-empty
  RELAY_DEMO=true RELAY_DEMO_KEY="$KEY" RELAY_DEMO_UPSTREAM="http://$UP" RELAY_DEMO_POLICY="$POLICY" \
  DATABASE_URL="sqlite://$WORK/relay-$RANDOM.db" RELAY_BIND="$1" REDIS_URL="$2" RUST_LOG=warn \
    "$BIN/relay-server" >/dev/null 2>"$WORK/relay.log" & PIDS+=($!)
  RELAY_PID=$!
  wait_port "$1"
}

echo "# direct, nginx, relay (memory), relay (redis); ${SECS}s per run"
load direct "http://$UP/v1/messages" "$CONNS"
load direct "http://$UP/v1/messages" 1
load nginx "http://$NGINX/v1/messages" "$CONNS"
load nginx "http://$NGINX/v1/messages" 1

start_relay "$MEM" ""
load relay-memory "http://$MEM/v1/messages" "$CONNS"
load relay-memory "http://$MEM/v1/messages" 1
echo "relay-memory peak_rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$RELAY_PID/status")"
kill "$RELAY_PID"

# A Redis of our own, so nobody else's commands are counted.
if command -v redis-server >/dev/null; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
  wait_port "127.0.0.1:$REDIS_PORT"
fi
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  start_relay "$RED" "$REDIS_URL"
  redis-cli -u "$REDIS_URL" config resetstat >/dev/null
  out="$(load relay-redis "http://$RED/v1/messages" "$CONNS")"
  echo "$out"
  n="$(echo "$out" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')"
  calls="$(redis-cli -u "$REDIS_URL" info commandstats | sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\).*/\1 \2/p')"
  total="$(echo "$calls" | awk '$1 !~ /^(config|info|ping|hello|client)/ {s += $2} END {print s+0}')"
  echo "relay-redis commands: $(echo "$calls" | tr '\n' ' ')"
  echo "relay-redis redis_commands_per_request=$(awk -v t="$total" -v n="$n" 'BEGIN { if (n > 0) printf "%.2f", t / n; else print "n/a" }')"
  load relay-redis "http://$RED/v1/messages" 1
  echo "relay-redis peak_rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$RELAY_PID/status")"
else
  echo "relay-redis skipped: no Redis at $REDIS_URL"
fi
