#!/usr/bin/env bash
# just bench-loadgen: is locci-loadgen the bottleneck? Against one fast nginx (one worker, CPU 0) both wrk and
# locci-loadgen (one thread, CPU 1, same connections) run in interleaved rounds; prints both rates and the
# ratio. Target: locci-loadgen reaches at least 90% of wrk. Then the same nginx over TLS (HTTP/1.1 and h2):
# locci-loadgen against oha (installed with cargo when missing; wrk speaks no h2), both with --insecure since the
# certificate is a self-signed one made here,
# the same way. OHA=0 skips those rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-8}; DURATION=${DURATION:-5}; CONNECTIONS=${CONNECTIONS:-32}
TARGET=${CARGO_TARGET_DIR:-target}; OUT=$TARGET/bench-loadgen
command -v wrk >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx-light >/dev/null; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build -q --release -p locci-loadgen
rm -rf "$OUT"; mkdir -p "$OUT"
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$OUT/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $OUT/nginx.pid; error_log $OUT/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$P; location / { return 200 "ok\n"; } } }
CONF
taskset -c 0 "$NGINX" -c "$OUT/nginx.conf" -p "$OUT" & NPID=$!
trap 'kill $NPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.1; done
run_wrk() { taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$P/" | awk '/Requests\/sec/ {print $2}' > "$OUT/wrk-$1"; }
run_lg() { taskset -c 1 "$TARGET/release/locci-loadgen" "http://127.0.0.1:$P/" --threads 1 --concurrency "$CONNECTIONS" \
  --duration "${DURATION}s" --json "$OUT/lg-$1.json" > /dev/null 2>&1; }
# The two take turns going first, so neither always runs on the heels of the other.
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then run_wrk "$r"; run_lg "$r"; else run_lg "$r"; run_wrk "$r"; fi
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
wrk = statistics.median(float(open(f"{out}/wrk-{r}").read()) for r in range(1, n + 1))
lg = statistics.median(json.load(open(f"{out}/lg-{r}.json"))["throughput_rps"] for r in range(1, n + 1))
for r in range(1, n + 1):
    print(f"round {r}: wrk {float(open(f'{out}/wrk-{r}').read()):.0f}  locci-loadgen {json.load(open(f'{out}/lg-{r}.json'))['throughput_rps']:.0f}")
print(f"median: wrk {wrk:.0f} req/s   locci-loadgen {lg:.0f} req/s   ratio {lg / wrk:.2f} (target >= 0.90)")
PY
[ "${OHA:-1}" = "0" ] && exit 0
command -v oha >/dev/null || cargo install -q --locked oha --version 1.16.0
OHA_BIN=$(command -v oha || echo "$HOME/.cargo/bin/oha")
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
PT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$OUT/nginx-tls.conf" <<CONF
worker_processes 1; daemon off; pid $OUT/nginx-tls.pid; error_log $OUT/nginx-tls.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$PT ssl http2; ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/key.pem;
           location / { return 200 "ok\n"; } } }
CONF
taskset -c 0 "$NGINX" -c "$OUT/nginx-tls.conf" -p "$OUT" & TPID=$!
trap 'kill $NPID $TPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PT) 2>/dev/null && break; sleep 0.1; done
for proto in h1 h2; do
  flag=""; oflag=""; [ "$proto" = h2 ] && { flag="--http2"; oflag="--http2"; }
  for r in $(seq "$ROUNDS"); do
    run_oha() { taskset -c 1 "$OHA_BIN" --no-tui --insecure $oflag -z "${DURATION}s" -c "$CONNECTIONS" \
      --output-format json "https://127.0.0.1:$PT/" > "$OUT/oha-$proto-$r.json" 2>/dev/null; }
    run_lgt() { taskset -c 1 "$TARGET/release/locci-loadgen" "https://127.0.0.1:$PT/" --insecure $flag \
      --threads 1 --concurrency "$CONNECTIONS" --duration "${DURATION}s" --json "$OUT/lgt-$proto-$r.json" > /dev/null 2>&1; }
    if [ $((r % 2)) -eq 1 ]; then run_oha; run_lgt; else run_lgt; run_oha; fi
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
for proto in ("h1", "h2"):
    oha = statistics.median(json.load(open(f"{out}/oha-{proto}-{r}.json"))["summary"]["requestsPerSec"] for r in range(1, n + 1))
    lg = statistics.median(json.load(open(f"{out}/lgt-{proto}-{r}.json"))["throughput_rps"] for r in range(1, n + 1))
    name = "HTTPS h2" if proto == "h2" else "HTTPS HTTP/1.1"
    print(f"{name}: oha {oha:.0f} req/s   locci-loadgen {lg:.0f} req/s   ratio {lg / oha:.2f}")
PY
