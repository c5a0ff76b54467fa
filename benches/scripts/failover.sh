#!/usr/bin/env bash
# just bench-failover: the benchmark of failure. nginx (passive max_fails), HAProxy (active checks plus its
# passive observe) and locci, each in front of three upstreams (benches/src/bin/fault-upstream.rs), under an
# open-loop load well under saturation, and three faults in turn on the first upstream: killed mid-run
# (SIGKILL), slowed to 200 ms (every answer, health checks too), answering 500 (every answer).
#
# For each proxy and fault, over the 10 s after the fault (the load generator's measured window starts as
# the fault is injected; the seconds before are its warm-up): failed requests (transport errors) and 5xx
# answers the client saw, p99 and p99.9 latency (answered requests, from the intended send time), and the time
# until the bad upstream stopped getting traffic: the end of the last 100 ms after the fault in which it got
# more than 1 % of the offered requests (health checks and nginx's one-request probes stay below that). What
# "traffic" is: requests other than GET /health, counted by the upstream itself; for the killed one, TCP
# connection attempts (SYNs) to its port, seen by tcpdump on loopback.
#
# The same policy for all three, in each one's best equivalent settings (written in the configs below):
#   - round robin over the three, upstream keep-alive, one worker; connect timeout 1 s;
#   - an attempt is too slow after 100 ms, and is retried once, at once, on another server, after a connect
#     failure, a reset, a timeout or a 5xx (GET is idempotent);
#   - a server failing 3 times in a row is taken out for 10 s (nginx: max_fails=3 fail_timeout=10s, the
#     failures being what proxy_next_upstream names; HAProxy: observe layer7 error-limit 3 on-error mark-down;
#     locci: outlier consecutive_5xx/consecutive_gateway_failure 3, base_ejection_secs 10);
#   - active checks GET /health every second, down after 2 failures, up after 2 successes (HAProxy and locci;
#     open-source nginx has none), a check failing after 150 ms (HAProxy: 50 ms to connect, 100 ms to read)
#     or 1 s (locci's check timeout is whole seconds).
# On 2 cores: the proxy under test runs on CPU 0, upstreams, load generator and tcpdump on CPU 1.
#
# Knobs (environment): ROUNDS (3), RATE (3000 requests/s), CONNECTIONS (64), BEFORE (5s of load before the
# fault), AFTER (10s), PROXIES ("nginx haproxy locci"), FAULTS ("kill slow error"), OUT (target/bench-failover).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}; RATE=${RATE:-3000}; CONNECTIONS=${CONNECTIONS:-64}; BEFORE=${BEFORE:-5}; AFTER=${AFTER:-10}
PROXIES=${PROXIES:-nginx haproxy locci}; FAULTS=${FAULTS:-kill slow error}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/bench-failover}

. benches/scripts/common.sh
install_missing nginx:nginx-light haproxy:haproxy tcpdump:tcpdump
NGINX=$(command -v nginx || echo /usr/sbin/nginx); HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
TCPDUMP=$(command -v tcpdump || echo /usr/bin/tcpdump)
cargo build -q --release -p locci-proxy -p locci-loadgen -p locci-benches --bin locci-proxy --bin locci-loadgen --bin fault-upstream
LOCCI=$TARGET/release/locci-proxy; LOADGEN=$TARGET/release/locci-loadgen; FAULTY=$TARGET/release/fault-upstream

rm -rf "$OUT"; mkdir -p "$OUT"
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop_all EXIT

# Writes the proxy's config for upstreams $1 $2 $3 listening on $4 into $5.
configure() {
  local name=$1 u1=$2 u2=$3 u3=$4 listen=$5 dir=$6
  case $name in
  nginx) cat > "$dir/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  upstream app { keepalive 64;
    server 127.0.0.1:$u1 max_fails=3 fail_timeout=10s;
    server 127.0.0.1:$u2 max_fails=3 fail_timeout=10s;
    server 127.0.0.1:$u3 max_fails=3 fail_timeout=10s; }
  server { listen 127.0.0.1:$listen; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
    proxy_connect_timeout 1s; proxy_read_timeout 100ms;
    proxy_next_upstream error timeout http_500 http_502 http_503 http_504; proxy_next_upstream_tries 2; } } }
CONF
  ;;
  haproxy) cat > "$dir/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  # Not 1 s: HAProxy gives a check min(timeout connect, inter) to connect and then timeout check more to
  # read, from the check's start, so with 1 s a 200 ms health answer passes (seen: L7OK on the slow server).
  # A loopback connect succeeds in microseconds or is refused at once, so 50 ms changes nothing else.
  timeout connect 50ms
  timeout client 30s
  timeout server 100ms
  timeout check 100ms
  http-reuse always
  retries 1
  option redispatch 1
  retry-on conn-failure empty-response response-timeout 500 502 503 504
frontend f
  bind 127.0.0.1:$listen
  default_backend app
backend app
  balance roundrobin
  option httpchk GET /health
  default-server check inter 1s fall 2 rise 2 observe layer7 error-limit 3 on-error mark-down
  server s1 127.0.0.1:$u1
  server s2 127.0.0.1:$u2
  server s3 127.0.0.1:$u3
CONF
  ;;
  locci) cat > "$dir/locci.yaml" <<CONF
mode: load_balancer
server: { bind_address: "127.0.0.1:$listen", workers: 1, connection_pool: { max_idle: 64, connect_timeout_secs: 1 } }
logging: { level: warn }
control_api: { enabled: false }
upstreams:
  app:
    servers: ["127.0.0.1:$u1", "127.0.0.1:$u2", "127.0.0.1:$u3"]
    strategy: round_robin
    retry: { attempts: 1, on: [connect_failure, reset, timeout, 5xx], per_try_timeout_secs: 0.1, backoff: { base_ms: 0, max_ms: 0 } }
    outlier: { consecutive_5xx: 3, consecutive_gateway_failure: 3, base_ejection_secs: 10 }
    health_check: { interval_secs: 1, timeout_secs: 1, path: /health, unhealthy_threshold: 2, healthy_threshold: 2 }
load_balancer: { upstream: app }
CONF
  ;;
  esac
}

start_proxy() {
  local name=$1 dir=$2
  case $name in
  nginx) taskset -c 0 "$NGINX" -c "$dir/nginx.conf" -p "$dir" & ;;
  haproxy) taskset -c 0 "$HAPROXY" -f "$dir/haproxy.cfg" > "$dir/haproxy.log" 2>&1 & ;;
  locci) taskset -c 0 "$LOCCI" --config "$dir/locci.yaml" > "$dir/locci.log" 2>&1 & ;;
  esac
  pids+=($!)
}

for round in $(seq "$ROUNDS"); do
  for fault in $FAULTS; do
    for name in $PROXIES; do
      dir="$OUT/$name-$fault-$round"; mkdir -p "$dir"
      U1=$(port); U2=$(port); U3=$(port); P=$(port)
      for u in 1 2 3; do
        eval "up=\$U$u"
        taskset -c 1 "$FAULTY" "127.0.0.1:$up" "$dir/arrivals-$u" & pids+=($!); eval "UPID$u=\$!"
      done
      configure "$name" "$U1" "$U2" "$U3" "$P" "$dir"
      start_proxy "$name" "$dir"
      for p in $U1 $U2 $U3 $P; do wait_port "$p"; done
      sleep 1   # the first health checks
      if [ "$fault" = kill ]; then
        taskset -c 1 "$TCPDUMP" -i lo -n -tt -l \
          "tcp dst port $U1 and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0" \
          > "$dir/syns" 2> "$dir/tcpdump.err" & pids+=($!)
        for _ in $(seq 100); do grep -q "listening on" "$dir/tcpdump.err" 2>/dev/null && break; sleep 0.05; done
      fi
      taskset -c 1 "$LOADGEN" "http://127.0.0.1:$P/" --rate "$RATE" --connections "$CONNECTIONS" --threads 1 \
        --warmup "${BEFORE}s" --duration "${AFTER}s" --json "$dir/load.json" > "$dir/load.txt" 2>&1 &
      load=$!
      sleep "$BEFORE"
      date +%s.%N > "$dir/fault-at"
      case $fault in
        kill) kill -KILL "$UPID1"; wait "$UPID1" 2>/dev/null || true ;;
        slow) kill -USR1 "$UPID1" ;;
        error) kill -USR2 "$UPID1" ;;
      esac
      wait "$load" || true
      stop_all
      echo "round $round $fault $name done"
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$RATE" "$AFTER" "$PROXIES" "$FAULTS" <<'PY'
import json, os, statistics, sys
out, rounds, rate, after = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
proxies, faults = sys.argv[5].split(), sys.argv[6].split()
BUCKET = 0.1
threshold = rate * BUCKET * 0.01   # 1 % of the offered requests in a bucket

def bad_traffic(d, fault):
    """Times (epoch seconds) the bad upstream got traffic."""
    if fault == "kill":
        path = f"{d}/syns"
        return [float(line.split()[0]) for line in open(path) if line.strip()] if os.path.exists(path) else []
    return [int(line) / 1000 for line in open(f"{d}/arrivals-1") if line.strip()]

def stop_time(times, t0):
    """End of the last bucket after t0 holding more than the threshold; None when the window's last one does."""
    buckets = [0] * int(after / BUCKET)
    for t in times:
        i = int((t - t0) / BUCKET)
        if 0 <= i < len(buckets):
            buckets[i] += 1
    over = [i for i, n in enumerate(buckets) if n > threshold]
    if not over:
        return 0.0, sum(buckets)
    if over[-1] == len(buckets) - 1:
        return None, sum(buckets)
    return (over[-1] + 1) * BUCKET, sum(buckets)

rows = []
for fault in faults:
    for name in proxies:
        runs = []
        for r in range(1, rounds + 1):
            d = f"{out}/{name}-{fault}-{r}"
            load = json.load(open(f"{d}/load.json"))
            t0 = float(open(f"{d}/fault-at").read())
            bad = sum(load["errors"].values()) + sum(v for k, v in load["status"].items() if int(k) >= 500)
            stop, got = stop_time(bad_traffic(d, fault), t0)
            runs.append(dict(bad=bad, requests=load["requests"], p99=load["latency_us"]["p99"],
                             p999=load["latency_us"]["p99_9"], stop=stop, got=got))
        med = lambda k: statistics.median(x[k] for x in runs)
        stops = [x["stop"] for x in runs]
        stop = None if sum(s is None for s in stops) * 2 > len(stops) else statistics.median(
            s if s is not None else after for s in stops)
        rows.append(dict(fault=fault, proxy=name, failed=med("bad"), requests=med("requests"), p99_ms=med("p99") / 1000,
                         p999_ms=med("p999") / 1000, stop_secs=stop, bad_upstream_got=med("got"), runs=runs))
print(f"offered {rate:.0f} req/s; the {after:.0f} s after the fault; medians of {rounds} round(s)")
print(f"{'fault':6} {'proxy':8} {'failed/5xx':>10} {'of':>7} {'p99 ms':>8} {'p99.9 ms':>9} {'stopped after':>14} {'bad got':>8}")
for r in rows:
    stop = f">{after:.0f} s" if r["stop_secs"] is None else f"{r['stop_secs']:.1f} s"
    print(f"{r['fault']:6} {r['proxy']:8} {r['failed']:>10.0f} {r['requests']:>7.0f} {r['p99_ms']:>8.2f} "
          f"{r['p999_ms']:>9.2f} {stop:>14} {r['bad_upstream_got']:>8.0f}")
json.dump(rows, open(f"{out}/summary.json", "w"), indent=2)
PY
