#!/usr/bin/env bash
# Load benchmark of the relay gateway, run by hand (not in CI), on one machine:
#   (a) direct calls to the demo upstream stand-in,
#   (b) the same calls through nginx as a plain reverse proxy with upstream keep-alive,
#   (b') through a bare hyper reverse proxy laid out as the gateway serves (relay-loadgen
#       proxy): the floor under a hyper-based gateway, so the relay's own cost shows apart,
#   (c) the full relay stack (auth, admission, relay, metering) on the memory limiter,
#   (d) the same on Redis, with Redis commands per relayed request from INFO commandstats.
# Prints throughput and p50/p99 latency with 32 connections and with 1 for each setup,
# then a summary: relay/nginx throughput ratio (target >= 0.70), p50 added over direct at
# one connection (target < 100 us), the relay's peak RSS, and Redis commands per relayed
# request, both top-level (what the server sends; a script counts once) and in total (with
# the commands scripts run, as INFO commandstats counts them; target <= 4). Traffic stays
# on 127.0.0.1; every run is bounded in time.
#
# On a shared VM one run of a setup swings by +-20% from the next, so direct, nginx and the
# relay on memory are measured in ROUNDS interleaved rounds and the summary gives the
# median of each round's ratio (and every round's).
#
#   benches/load/run.sh            # SECONDS_PER_RUN=10 CONNECTIONS=32 ROUNDS=3 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/targets/server}"
SECS="${SECONDS_PER_RUN:-10}"
CONNS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-3}"
REDIS_PORT="${REDIS_PORT:-6390}"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
PORT_BASE="${PORT_BASE:-9101}"  # five ports from here: stand-in, nginx, relay (memory), relay (redis), bare hyper
UP=127.0.0.1:$PORT_BASE NGINX=127.0.0.1:$((PORT_BASE + 1)) MEM=127.0.0.1:$((PORT_BASE + 2)) RED=127.0.0.1:$((PORT_BASE + 3))
HYPER=127.0.0.1:$((PORT_BASE + 4))
# shellcheck source=common.sh
. benches/load/common.sh
load() { # name url conns -> one line, also kept in $OUT
  OUT="$("$BIN/relay-loadgen" run --url "$2" --connections "$3" --seconds "$SECS" \
    --header "x-api-key: $KEY" --header "anthropic-version: 2023-06-01" --body "$BODY" | sed "s/^/$1 conns=$3 /")"
  echo "$OUT"
}
field() { echo "$1" | sed -n "s/.* $2=\([0-9.]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

"$BIN/relay-loadgen" upstream --bind "$UP" >/dev/null & PIDS+=($!)
wait_port "$UP"

start_nginx
"$BIN/relay-loadgen" proxy --bind "$HYPER" --upstream "$UP" >/dev/null & PIDS+=($!)
wait_port "$HYPER"


echo "# direct, nginx, bare hyper, relay (memory) in $ROUNDS interleaved rounds, then relay (redis); ${SECS}s per run"
start_relay "$MEM" ""
THROUGHPUT_RATIOS="" ADDED_NGINX="" ADDED_MEM="" HYPER_RATIOS="" ADDED_HYPER=""
for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round"
  load direct "http://$UP/v1/messages" "$CONNS"; DIRECT_RPS="$(field "$OUT" rps)"
  load nginx "http://$NGINX/v1/messages" "$CONNS"; NGINX_RPS="$(field "$OUT" rps)"
  load hyper "http://$HYPER/v1/messages" "$CONNS"; HYPER_RPS="$(field "$OUT" rps)"
  load relay-memory "http://$MEM/v1/messages" "$CONNS"; MEM_RPS="$(field "$OUT" rps)"
  load direct "http://$UP/v1/messages" 1; DIRECT_P50="$(field "$OUT" p50_us)"
  load nginx "http://$NGINX/v1/messages" 1; NGINX_P50="$(field "$OUT" p50_us)"
  load hyper "http://$HYPER/v1/messages" 1; HYPER_P50="$(field "$OUT" p50_us)"
  load relay-memory "http://$MEM/v1/messages" 1; MEM_P50="$(field "$OUT" p50_us)"
  THROUGHPUT_RATIOS="$THROUGHPUT_RATIOS $(ratio "$MEM_RPS" "$NGINX_RPS")"
  HYPER_RATIOS="$HYPER_RATIOS $(ratio "$HYPER_RPS" "$NGINX_RPS")"
  ADDED_HYPER="$ADDED_HYPER $((HYPER_P50 - DIRECT_P50))"
  NGINX_RPS_ALL="${NGINX_RPS_ALL:-} $NGINX_RPS" DIRECT_P50_ALL="${DIRECT_P50_ALL:-} $DIRECT_P50"
  NGINX_DIRECT_RATIOS="${NGINX_DIRECT_RATIOS:-} $(ratio "$NGINX_RPS" "$DIRECT_RPS")"
  ADDED_NGINX="$ADDED_NGINX $((NGINX_P50 - DIRECT_P50))"
  ADDED_MEM="$ADDED_MEM $((MEM_P50 - DIRECT_P50))"
done
# The Redis setup runs once, after the rounds: compared with the median nginx and direct.
NGINX_RPS="$(echo "$NGINX_RPS_ALL" | median)" DIRECT_P50="$(echo "$DIRECT_P50_ALL" | median)"
MEM_RSS="$(awk '/VmHWM/ {print $2}' "/proc/$RELAY_PID/status")"
echo "relay-memory peak_rss_kib=$MEM_RSS"
kill "$RELAY_PID"

# A Redis of our own, so nobody else's commands are counted.
RED_RPS="" RED_P50="" RED_RSS="" TOTAL_PER_REQ="n/a" TOP_PER_REQ="n/a"
if command -v redis-server >/dev/null; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
  wait_port "127.0.0.1:$REDIS_PORT"
fi
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  start_relay "$RED" "$REDIS_URL"
  redis-cli -u "$REDIS_URL" config resetstat >/dev/null
  load relay-redis "http://$RED/v1/messages" "$CONNS"; RED_RPS="$(field "$OUT" rps)"
  n="$(field "$OUT" requests)"
  calls="$(redis-cli -u "$REDIS_URL" info commandstats | sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\).*/\1 \2/p')"
  total="$(echo "$calls" | awk '$1 !~ /^(config|info|ping|hello|client|monitor)/ {s += $2} END {print s+0}')"
  echo "relay-redis commands: $(echo "$calls" | tr '\n' ' ')"
  TOTAL_PER_REQ="$(ratio "$total" "$n")"
  # INFO commandstats also counts the commands a script runs. A short MONITOR sample
  # (separate from the timed runs: MONITOR slows Redis down) tells them apart: MONITOR
  # tags script-invoked commands with "lua".
  redis-cli -u "$REDIS_URL" monitor > "$WORK/monitor.txt" & MON=$!
  sleep 0.5
  SECS=2 load relay-redis-monitored "http://$RED/v1/messages" 4 >/dev/null
  kill "$MON" 2>/dev/null || true; wait "$MON" 2>/dev/null || true
  read -r in_lua all < <(grep -E '^[0-9]+\.[0-9]+ \[' "$WORK/monitor.txt" \
    | grep -viE '"(config|info|ping|hello|client|monitor)"' \
    | awk '/\[[0-9]+ lua\]/ {l++} {a++} END {print l+0, a+0}')
  TOP_PER_REQ="$(awk -v t="$TOTAL_PER_REQ" -v l="$in_lua" -v a="$all" 'BEGIN { if (a > 0 && t != "n/a") printf "%.2f", t * (a - l) / a; else print "n/a" }')"
  echo "relay-redis monitor sample: $all commands, $in_lua of them run by scripts"
  echo "relay-redis redis_commands_per_request: top_level=$TOP_PER_REQ total_with_script_commands=$TOTAL_PER_REQ"
  load relay-redis "http://$RED/v1/messages" 1; RED_P50="$(field "$OUT" p50_us)"
  RED_RSS="$(awk '/VmHWM/ {print $2}' "/proc/$RELAY_PID/status")"
  echo "relay-redis peak_rss_kib=$RED_RSS"
else
  echo "relay-redis skipped: no Redis at $REDIS_URL"
fi

echo "# summary"
echo "summary throughput: relay-memory/nginx=$(echo "$THROUGHPUT_RATIOS" | median) (rounds:$THROUGHPUT_RATIOS) relay-redis/nginx=$(ratio "$RED_RPS" "$NGINX_RPS") (against the median nginx) nginx/direct=$(echo "$NGINX_DIRECT_RATIOS" | median) (target relay/nginx >= 0.70)"
echo "summary bare_hyper: hyper/nginx=$(echo "$HYPER_RATIOS" | median) (rounds:$HYPER_RATIOS) added_p50_us_at_1_conn=$(echo "$ADDED_HYPER" | median) (rounds:$ADDED_HYPER)"
echo "summary added_p50_us_at_1_conn: nginx=$(echo "$ADDED_NGINX" | median) (rounds:$ADDED_NGINX) relay-memory=$(echo "$ADDED_MEM" | median) (rounds:$ADDED_MEM) relay-redis=$(if [ -n "$RED_P50" ]; then echo $((RED_P50 - ${DIRECT_P50%.*})); else echo n/a; fi) (against the median direct) (target relay < 100)"
echo "summary peak_rss_mib: relay-memory=$((MEM_RSS / 1024)) relay-redis=$(if [ -n "$RED_RSS" ]; then echo $((RED_RSS / 1024)); else echo n/a; fi)"
echo "summary redis_commands_per_request: top_level=$TOP_PER_REQ total_with_script_commands=$TOTAL_PER_REQ (target <= 4)"
