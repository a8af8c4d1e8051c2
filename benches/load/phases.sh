#!/usr/bin/env bash
# Where a proxy's time goes at one connection, from its own syscalls: for nginx, the bare
# hyper proxy and the relay (memory backend), the busiest serving thread's syscall entries
# and exits are recorded (perf tracepoints, no sampling) while one closed-loop connection
# runs, and the medians per request are printed:
#   request path   from reading the client's request to writing it upstream (user space)
#   response path  from reading the upstream's answer to writing it to the client
#   writev up/client  time inside those two writes (the kernel delivers on loopback and
#                  wakes the reader there, so a remote wake-up shows up here)
# Tracing slows the traced thread down, so the p50 printed beside is not run.sh's. Needs
# root and perf (Debian's linux-perf). Run by hand, not in CI.
#
#   benches/load/phases.sh      # SECONDS_PER_RUN=4 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/targets/server}"
SECS="${SECONDS_PER_RUN:-4}"
PORT_BASE="${PORT_BASE:-9121}"
UP=127.0.0.1:$PORT_BASE NGINX=127.0.0.1:$((PORT_BASE + 1)) HYPER=127.0.0.1:$((PORT_BASE + 2)) MEM=127.0.0.1:$((PORT_BASE + 3))
command -v perf >/dev/null || { echo "phases.sh needs perf (apt-get install linux-perf)" >&2; exit 1; }
# shellcheck source=common.sh
. benches/load/common.sh

"$BIN/relay-loadgen" upstream --bind "$UP" >/dev/null & PIDS+=($!)
"$BIN/relay-loadgen" proxy --bind "$HYPER" --upstream "$UP" >/dev/null & PIDS+=($!)
HYPER_PID=$!
wait_port "$UP"
start_nginx
start_relay "$MEM" ""
wait_port "$HYPER"

cpu_ticks() { for t in "$@"; do echo "$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0) $t"; done; }
busiest_thread() { # pids... -> the thread that used the most CPU in the last second
  local tasks=() t
  for p in "$@"; do for t in /proc/"$p"/task/*; do tasks+=("$t"); done; done
  cpu_ticks "${tasks[@]}" > "$WORK/t1"; sleep 1; cpu_ticks "${tasks[@]}" > "$WORK/t2"
  paste "$WORK/t1" "$WORK/t2" | awk '{print $3 - $1, $2}' | sort -n | tail -n1 | sed 's|.*/task/||'
}

measure() { # name addr pids...
  local name="$1" addr="$2"; shift 2
  "$BIN/relay-loadgen" run --url "http://$addr/v1/messages" --connections 1 --seconds "$SECS" \
    --header "x-api-key: $KEY" --header "anthropic-version: 2023-06-01" --body "$BODY" > "$WORK/load" &
  local load=$!
  local tid; tid="$(busiest_thread "$@")"
  perf record -q -t "$tid" -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -o "$WORK/perf.data" \
    -- sleep "$((SECS > 3 ? SECS - 2 : 1))" >/dev/null 2>&1
  wait "$load"
  perf script -i "$WORK/perf.data" -F time,event,trace 2>/dev/null | python3 -c '
import re, sys, statistics
name, load = sys.argv[1], sys.argv[2]
spans, pending, read_at = {}, {}, {}
paths = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+)\s*(.*)", line)
    if not m:
        continue
    t, kind, nr, rest = float(m.group(1)) * 1e6, m.group(2), int(m.group(3)), m.group(4)
    if kind == "enter":
        fd = rest.strip("(").split(",")[0]
        pending[nr] = (t, fd)
        if nr == 20:
            # From the last read on another socket to this write: the work in between.
            for src, (t_read, n_read) in read_at.items():
                if src != fd and n_read > 0:
                    paths.setdefault((src, fd), []).append(t - t_read)
            read_at.clear()
    elif nr in pending:
        t0, fd = pending.pop(nr)
        ret = rest.strip().split("=")[-1].strip()
        n = int(ret) if ret.lstrip("-").isdigit() else 0
        if nr in (0, 45) and n > 0:
            read_at[fd] = (t, n)
        if nr == 20:
            spans.setdefault(fd, []).append((t - t0, n))
# The client gets the bigger write (the answer); the upstream the smaller (the request).
writes = {fd: (statistics.median(d for d, _ in v), statistics.median(n for _, n in v)) for fd, v in spans.items() if len(v) > 50}
if len(writes) < 2:
    print(f"{name}: too few requests traced"); sys.exit()
client = max(writes, key=lambda fd: writes[fd][1])
upstream = min(writes, key=lambda fd: writes[fd][1])
def path(src, dst):
    v = paths.get((src, dst), [])
    return statistics.median(v) if v else float("nan")
p50 = re.search(r"p50_us=(\d+)", load)
print(f"{name}: p50 {p50.group(1)} us (traced) | request path {path(client, upstream):.0f} us, response path {path(upstream, client):.0f} us | writev up {writes[upstream][0]:.0f} us, client {writes[client][0]:.0f} us")
' "$name" "$(cat "$WORK/load")"
}

echo "# medians per request at one connection, ${SECS}s each"
measure nginx "$NGINX" $(pgrep -f "nginx: worker process" | tr '\n' ' ')
measure bare-hyper "$HYPER" "$HYPER_PID"
measure relay-memory "$MEM" "$RELAY_PID"
