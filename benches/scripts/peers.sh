#!/usr/bin/env bash
# just bench-peers: locci, nginx and HAProxy side by side on loopback, in front of the same three upstream
# servers (one nginx serving a fixed 200), same round robin, same upstream keep-alive, one worker each,
# measured with locci-loadgen in interleaved rounds. Prints requests/s, p50, p99 and RSS for each, and each
# as a ratio to nginx. On 2 cores: the proxy under test runs on CPU 0, upstream and load generator on CPU 1.
#
# Same work per request: nginx and HAProxy are configured to add what locci always adds (X-Forwarded-For,
# -Proto and -Host and an X-Request-Id to the upstream, the X-Request-Id back to the client).
# A fourth row, "pingora", is bare Pingora (benches/src/bin/bare-pingora.rs: round robin and nothing else, one
# worker, the same allocator): the floor under locci, so the table shows which part of a gap to nginx is
# Pingora's and which is locci's.
#
# Three setups, one table each (SETUPS, default "1w-keepalive 2w-keepalive 1w-close"):
#   1w-keepalive  one worker each; the proxy on CPU 0, upstream and load generator on CPU 1;
#   2w-keepalive  two workers each (nginx worker_processes 2, HAProxy nbthread 2, locci workers 2, bare Pingora
#                 2 threads) allowed on both CPUs, upstream and load generator still on CPU 1, the same for all;
#   1w-close      one worker, every client request on a new connection (`Connection: close`), upstream
#                 keep-alive as before: the cost of accepting and closing client connections.
# Knobs (environment): ROUNDS (3), DURATION (10s), WARMUP (2s), CONCURRENCY (32), SETUPS, OUT (target/bench-peers).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-2s}; CONCURRENCY=${CONCURRENCY:-32}
SETUPS=${SETUPS:-1w-keepalive 2w-keepalive 1w-close}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/bench-peers}

. benches/scripts/common.sh
install_missing nginx:nginx-light haproxy:haproxy
NGINX=$(command -v nginx || echo /usr/sbin/nginx); HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
cargo build -q --release -p locci-proxy -p locci-loadgen -p locci-benches --bin locci-proxy --bin locci-loadgen --bin bare-pingora
LOCCI=$TARGET/release/locci-proxy; LOADGEN=$TARGET/release/locci-loadgen; BARE=$TARGET/release/bare-pingora

rm -rf "$OUT"; mkdir -p "$OUT"
ROOT=$OUT
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT

# Each setup starts every server afresh with its own worker count, so one setup's state cannot reach the next.
for SETUP in $SETUPS; do
OUT=$ROOT/$SETUP; mkdir -p "$OUT"
U1=$(port); U2=$(port); U3=$(port); PN=$(port); PH=$(port); PL=$(port); PB=$(port)
case $SETUP in
  1w-keepalive) WORKERS=1; PROXY_CPUS=0; HEADERS=() ;;
  2w-keepalive) WORKERS=2; PROXY_CPUS=0,1; HEADERS=() ;;
  1w-close) WORKERS=1; PROXY_CPUS=0; HEADERS=(-H "Connection: close") ;;
  *) echo "unknown setup $SETUP (1w-keepalive, 2w-keepalive, 1w-close)" >&2; exit 2 ;;
esac
cat > "$OUT/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $OUT/upstream.pid; error_log $OUT/upstream.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$U1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$U2; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$U3; location / { return 200 "ok\n"; } } }
CONF
cat > "$OUT/nginx.conf" <<CONF
worker_processes $WORKERS; daemon off; pid $OUT/nginx.pid; error_log $OUT/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  upstream app { server 127.0.0.1:$U1; server 127.0.0.1:$U2; server 127.0.0.1:$U3; keepalive 64; }
  server { listen 127.0.0.1:$PN; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host; proxy_set_header X-Request-Id \$request_id;
    add_header X-Request-Id \$request_id; } } }
CONF
cat > "$OUT/haproxy.cfg" <<CONF
global
  nbthread $WORKERS
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$PH
  option forwardfor
  unique-id-format %[uuid()]
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-Id %[unique-id]
  http-response set-header X-Request-Id %[unique-id]
  default_backend app
backend app
  balance roundrobin
  server s1 127.0.0.1:$U1
  server s2 127.0.0.1:$U2
  server s3 127.0.0.1:$U3
CONF
cat > "$OUT/locci.yaml" <<CONF
mode: load_balancer
server: { bind_address: "127.0.0.1:$PL", workers: $WORKERS, connection_pool: { max_idle: 64 } }
logging: { level: warn }
control_api: { enabled: false }
upstreams:
  app: { servers: ["127.0.0.1:$U1", "127.0.0.1:$U2", "127.0.0.1:$U3"], strategy: round_robin }
load_balancer: { upstream: app }
CONF

taskset -c 1 "$NGINX" -c "$OUT/upstream.conf" -p "$OUT" & pids+=($!)
taskset -c "$PROXY_CPUS" "$NGINX" -c "$OUT/nginx.conf" -p "$OUT" & pids+=($!); NGINX_PID=$!
taskset -c "$PROXY_CPUS" "$HAPROXY" -f "$OUT/haproxy.cfg" & pids+=($!); HA_PID=$!
taskset -c "$PROXY_CPUS" "$LOCCI" --config "$OUT/locci.yaml" > "$OUT/locci.log" 2>&1 & pids+=($!); LOCCI_PID=$!
BARE_THREADS=$WORKERS taskset -c "$PROXY_CPUS" "$BARE" "127.0.0.1:$PB" "127.0.0.1:$U1" "127.0.0.1:$U2" "127.0.0.1:$U3" > "$OUT/bare.log" 2>&1 & pids+=($!); BARE_PID=$!
for p in $U1 $U2 $U3 $PN $PH $PL $PB; do wait_port "$p"; done

# RSS of a process and its children, in KiB.
rss() { local total=0; for p in $1 $(pgrep -P "$1" || true); do total=$((total + $(awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0))); done; echo $total; }

declare -A PORT=([nginx]=$PN [haproxy]=$PH [locci]=$PL [pingora]=$PB)
declare -A PID=([nginx]=$NGINX_PID [haproxy]=$HA_PID [locci]=$LOCCI_PID [pingora]=$BARE_PID)
for round in $(seq "$ROUNDS"); do
  for name in nginx haproxy locci pingora; do
    taskset -c 1 "$LOADGEN" "http://127.0.0.1:${PORT[$name]}/" --concurrency "$CONCURRENCY" --threads 1 \
      --duration "$DURATION" --warmup "$WARMUP" --json "$OUT/$name-$round.json" "${HEADERS[@]}" > /dev/null 2>&1
    echo "$(rss "${PID[$name]}")" > "$OUT/$name-$round.rss"
    echo "$SETUP: round $round $name done"
  done
done

python3 - "$OUT" "$ROUNDS" "$SETUP" <<'PY'
import json, statistics, sys
out, rounds, setup = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for name in ["nginx", "haproxy", "locci", "pingora"]:
    rs = [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
    rss = [int(open(f"{out}/{name}-{r}.rss").read()) for r in range(1, rounds + 1)]
    bad = sum(sum(r["errors"].values()) + sum(v for k, v in r["status"].items() if k != "200") for r in rs)
    rows[name] = dict(rps=statistics.median(r["throughput_rps"] for r in rs),
                      p50=statistics.median(r["latency_us"]["p50"] for r in rs),
                      p99=statistics.median(r["latency_us"]["p99"] for r in rs),
                      rss=max(rss) / 1024, bad=bad)
n = rows["nginx"]
print(f"setup {setup}")
print(f"{'proxy':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'non-200':>8} {'rps/nginx':>10} {'p99/nginx':>10}")
for name, r in rows.items():
    print(f"{name:8} {r['rps']:>10.0f} {r['p50']/1000:>8.3f} {r['p99']/1000:>8.3f} {r['rss']:>8.1f} {r['bad']:>8} "
          f"{r['rps']/n['rps']:>10.2f} {r['p99']/n['p99']:>10.2f}")
json.dump(rows, open(f"{out}/summary.json", "w"), indent=2)
PY
cleanup
done
