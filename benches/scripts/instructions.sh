#!/usr/bin/env bash
# just bench-instructions: user-space instructions per request, counted by valgrind's callgrind, for nginx,
# bare Pingora and locci in front of the same upstream (an nginx answering 200 "ok"), on one keep-alive
# client connection. Instructions, not seconds: the count repeats for the same binary and input whatever
# else the machine is doing, so it resolves differences (locci's share over bare Pingora, one Pingora knob)
# that the timed benches' run-to-run spread hides. It does not count the kernel's work (system calls), which
# is about the same for all three (GUIDE §10).
#
# Each proxy runs twice, for N1 and N2 requests; per request = (I(N2) - I(N1)) / (N2 - N1), so start-up and
# shutdown cancel out. For locci it then prints its ProxyHttp phases' inclusive instructions per request (from
# the difference of the runs) and where it spends more than bare Pingora, function by function (fat LTO
# inlines much of both, so these are the functions that survived as symbols; benches/scripts/callgrind_diff.py).
# Knobs (environment): N1 (300), N2 (1500), PROXIES ("nginx pingora locci"), LOCCI_EXTRA (YAML lines added
# under locci's `server:`), OUT (target/bench-instructions).
set -euo pipefail
cd "$(dirname "$0")/../.."
N1=${N1:-300}; N2=${N2:-1500}; PROXIES=${PROXIES:-nginx pingora locci}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/bench-instructions}

. benches/scripts/common.sh
install_missing nginx:nginx-light valgrind:valgrind
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build -q --release -p locci-proxy -p locci-benches --bin locci-proxy --bin bare-pingora
LOCCI=$TARGET/release/locci-proxy; BARE=$TARGET/release/bare-pingora

rm -rf "$OUT"; mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

U1=$(port); U2=$(port); U3=$(port)
cat > "$OUT/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $OUT/upstream.pid; error_log $OUT/upstream.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$U1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$U2; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$U3; location / { return 200 "ok\n"; } } }
CONF
"$NGINX" -c "$OUT/upstream.conf" -p "$OUT" & pids+=($!)
for p in $U1 $U2 $U3; do wait_port "$p"; done

# The proxy's command line for one run on port $2, its files under $OUT/$1.
command_for() {
  local name=$1 listen=$2
  case $name in
    nginx)
      # One process (no master), the same forwarding headers as locci adds (as in bench-peers).
      cat > "$OUT/$name.conf" <<CONF
master_process off; daemon off; pid $OUT/$name.pid; error_log $OUT/$name.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000;
  upstream app { server 127.0.0.1:$U1; server 127.0.0.1:$U2; server 127.0.0.1:$U3; keepalive 64; }
  server { listen 127.0.0.1:$listen; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host; proxy_set_header X-Request-Id \$request_id;
    add_header X-Request-Id \$request_id; } } }
CONF
      echo "$NGINX -c $OUT/$name.conf -p $OUT" ;;
    pingora) echo "$BARE 127.0.0.1:$listen 127.0.0.1:$U1 127.0.0.1:$U2 127.0.0.1:$U3" ;;
    locci)
      {
        echo "mode: load_balancer"
        echo "server:"
        echo "  bind_address: \"127.0.0.1:$listen\""
        echo "  workers: 1"
        echo "  connection_pool: { max_idle: 64 }"
        [ -n "${LOCCI_EXTRA:-}" ] && printf '%s\n' "$LOCCI_EXTRA" | sed 's/^/  /'
        echo "logging: { level: warn }"
        echo "control_api: { enabled: false }"
        echo "upstreams:"
        echo "  app: { servers: [\"127.0.0.1:$U1\", \"127.0.0.1:$U2\", \"127.0.0.1:$U3\"], strategy: round_robin }"
        echo "load_balancer: { upstream: app }"
      } > "$OUT/$name.yaml"
      echo "$LOCCI --config $OUT/$name.yaml" ;;
    *) echo "unknown proxy $name (nginx, pingora, locci)" >&2; return 2 ;;
  esac
}

# Sends $2 GETs one after another on one keep-alive connection to port $1; fails on any answer but 200 "ok".
client() {
  python3 - "$1" "$2" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for i in range(n):
    c.request("GET", "/", headers={"User-Agent": "bench-instructions"})
    r = c.getresponse()
    body = r.read()
    if r.status != 200 or body != b"ok\n":
        sys.exit(f"request {i}: status {r.status}, body {body[:40]!r}")
PY
}

# Runs proxy $1 under callgrind for $2 requests; prints the instructions counted.
measure() {
  local name=$1 n=$2 listen; listen=$(port)
  local cmd; cmd=$(command_for "$name" "$listen")
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name-$n.out" $cmd > "$OUT/$name-$n.log" 2>&1 &
  local pid=$!
  wait_port "$listen" 1200
  # One request first, so every run pays the same first-connection costs (pool empty, lazy statics).
  client "$listen" 1
  client "$listen" "$n"
  # SIGINT: the fast shutdown of Pingora and nginx alike; callgrind writes its counts as the process exits.
  kill -INT "$pid"; wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$OUT/$name-$n.out"
}

declare -A PER
for name in $PROXIES; do
  i1=$(measure "$name" "$N1"); i2=$(measure "$name" "$N2")
  PER[$name]=$(( (i2 - i1) / (N2 - N1) ))
  echo "$name: $i1 instructions for $N1 requests, $i2 for $N2: ${PER[$name]} per request"
done

echo
printf '%-8s %14s\n' proxy "instr/request"
for name in $PROXIES; do printf '%-8s %14s\n' "$name" "${PER[$name]}"; done
if [ -n "${PER[pingora]:-}" ] && [ -n "${PER[locci]:-}" ]; then
  echo "locci over bare Pingora: $(( PER[locci] - PER[pingora] )) instructions per request" \
    "(locci/pingora $(python3 -c "print(f'{${PER[locci]}/${PER[pingora]}:.3f}')"))"
fi
# Where the instructions go, by function: locci's phases (inclusive), and where locci spends more than bare
# Pingora (own instructions), each per request from the difference of the two runs.
if [ -n "${PER[locci]:-}" ]; then
  python3 benches/scripts/callgrind_diff.py "$OUT/locci-$N1.out" "$OUT/locci-$N2.out" $((N2 - N1)) --top 0 --inclusive Gateway
fi
if [ -n "${PER[pingora]:-}" ] && [ -n "${PER[locci]:-}" ]; then
  python3 benches/scripts/callgrind_diff.py "$OUT/locci-$N1.out" "$OUT/locci-$N2.out" $((N2 - N1)) --top 25 \
    --against "$OUT/pingora-$N1.out" "$OUT/pingora-$N2.out" $((N2 - N1))
fi
