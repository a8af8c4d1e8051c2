# Shared by run.sh and phases.sh (sourced, after UP, NGINX and CARGO_TARGET_DIR are set):
# the request, the policy, nginx as a plain reverse proxy, and starting the relay.

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

start_nginx() { # nginx on $NGINX in front of $UP, with upstream keep-alive
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
}

start_relay() { # bind redis-url-or-empty; sets RELAY_PID
  RELAY_DEMO=true RELAY_DEMO_KEY="$KEY" RELAY_DEMO_UPSTREAM="http://$UP" RELAY_DEMO_POLICY="$POLICY" \
  DATABASE_URL="sqlite://$WORK/relay-$RANDOM.db" RELAY_BIND="$1" REDIS_URL="$2" RUST_LOG=warn \
    "$BIN/relay-server" >/dev/null 2>"$WORK/relay.log" & PIDS+=($!)
  RELAY_PID=$!
  wait_port "$1"
}
