# locci's everyday commands. `just --list` shows them all.
# CI runs `just ci` (see .ci/run); the README's test command is `scripts/setup && just ci`.

set shell := ["bash", "-euo", "pipefail", "-c"]

jobs := "2"

# List the recipes.
default:
    @just --list

# Build every crate (debug).
build:
    cargo build --workspace --all-targets -j {{jobs}}

# Run the zero-set-up demo: gateway on 127.0.0.1:8484 in front of three built-in backends.
demo:
    cargo run -j {{jobs}} -p locci-proxy -- demo

# Run the proxy with a config file.
run config="config.yaml":
    cargo run -j {{jobs}} -p locci-proxy -- --config {{config}}

# Validate one config file.
check config="config.yaml":
    cargo run -q -j {{jobs}} -p locci-proxy -- check --config {{config}}

# Validate every config shipped in the repo.
check-examples:
    cargo build -q -j {{jobs}} -p locci-proxy
    for f in config.yaml examples/*.yaml; do cargo run -q -j {{jobs}} -p locci-proxy -- check --config "$f"; done

# Run every test: core unit and property tests, then the end-to-end tests against the real binary (the reload
# gate's and the image's need the seeded simulator, so it is built first).
test: sim-build
    cargo build -j {{jobs}} --workspace --all-targets
    cargo test -j {{jobs}} --workspace --no-fail-fast

# Formatting check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy -j {{jobs}} --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Criterion benchmarks: the core's hot paths and whole-request latency through a running locci-proxy (release).
bench:
    cargo build -q --release -j {{jobs}} -p locci-proxy
    cargo bench -j {{jobs}} -p locci-benches -- --warm-up-time 1 --measurement-time 3

# The release gate: this tree against a baseline revision (BASE=tag-or-commit; default the last tag, else the
# commit that recorded benches/baseline.json), built and benched in one run, interleaved, judged on the ratio.
bench-gate:
    python3 benches/scripts/gate.py

# The gate's own proof: with server selection planted twice as slow, the gate must fail.
bench-gate-proof:
    ! SLOWDOWN=benches/scripts/slowdown-select.patch BENCHES=core python3 benches/scripts/gate.py

# Run the gate and record the candidate's medians in benches/baseline.json (commit it with the reason).
bench-baseline:
    python3 benches/scripts/gate.py --update

# locci, nginx, HAProxy and bare Pingora side by side on loopback (installs nginx-light and haproxy when missing).
bench-peers:
    bash benches/scripts/peers.sh

# Instructions per request (callgrind) for nginx, bare Pingora and locci, and where locci's extra ones go.
bench-instructions:
    bash benches/scripts/instructions.sh

# The benchmark of failure: nginx, HAProxy and locci under one policy, an upstream killed, slowed and failing in turn.
bench-failover:
    bash benches/scripts/failover.sh

# Is locci-loadgen the bottleneck? It against wrk on the same fast server (installs wrk when missing).
bench-loadgen:
    bash benches/scripts/loadgen-vs-wrk.sh

# Everything CI runs.
ci: lint test check-examples sim

# Make a self-signed certificate for local TLS testing: certs/server.crt and certs/server.key (localhost, 127.0.0.1).
tls-cert:
    mkdir -p certs
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 365 -subj /CN=localhost \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout certs/server.key -out certs/server.crt 2>/dev/null
    @echo "wrote certs/server.crt and certs/server.key; set server.tls.cert_path/key_path to them"

# Start Prometheus and Grafana (needs the prom/prometheus and grafana/grafana images) for a locci on this host.
monitor:
    printf '%s' "${LOCCI_API_KEY:-}" > monitoring/.api_key
    $(docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose) -f monitoring/docker-compose.monitoring.yaml up -d
    @echo "Grafana: http://127.0.0.1:3000 (admin/admin), Prometheus: http://127.0.0.1:9090"

# The simulator binary: optimised with debug assertions, --cfg tokio_unstable (seeds tokio's select!), own target dir.
sim_target := env_var_or_default("CARGO_TARGET_DIR", "target") + "/sim"
sim_bin := sim_target + "/sim/locci-sim"

# Build the simulator.
sim-build:
    RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR={{sim_target}} cargo build -q -j {{jobs}} --profile sim -p locci-sim

# Every scenario over seeds 1..=8, the swarm scenario over 8 swarm seeds, the kept regressions, a determinism
# check, and the simulator's own command-line tests (on this same seeded build).
sim seeds="8": sim-build
    RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR={{sim_target}} cargo test -q -j {{jobs}} --profile sim -p locci-sim --test cli
    {{sim_bin}} sweep --seeds {{seeds}} --jobs {{jobs}}
    {{sim_bin}} sweep scenarios/swarm-mixed.yaml --swarm --seeds {{seeds}} --jobs {{jobs}}
    {{sim_bin}} check scenarios/one-of-three-dies.yaml --seed 7
    {{sim_bin}} check scenarios/swarm-mixed.yaml --seed 3 --swarm

# Run one scenario (the replay command a failure prints): just sim-one scenarios/partition.yaml 42 [--swarm]
sim-one scenario seed="1" *flags: sim-build
    {{sim_bin}} run {{scenario}} --seed {{seed}} {{flags}} --plot target/sim-{{seed}}.svg

# Shrink a failing run into scenarios/regressions/ and keep it: just sim-shrink scenarios/swarm-mixed.yaml 42 --swarm
sim-shrink scenario seed *flags: sim-build
    {{sim_bin}} shrink {{scenario}} --seed {{seed}} {{flags}}

# The bug catalogue: each planted bug in sim/mutants/ applied in turn, rebuilt, run; a table of what caught it.
sim-mutants:
    bash scripts/sim-mutants

# Many seeds, swarm mode (nightly): just sim-nightly 500
sim-nightly seeds="200": sim-build
    {{sim_bin}} sweep --seeds {{seeds}} --jobs {{jobs}}
    {{sim_bin}} sweep scenarios/swarm-mixed.yaml --swarm --seeds {{seeds}} --jobs {{jobs}}

# Release artefacts: locci-proxy, locci-sim (seeded; the reload gate runs it) and locci-loadgen in target/dist/.
dist: sim-build
    cargo build -q --release -j {{jobs}} -p locci-proxy -p locci-loadgen
    rm -rf target/dist && mkdir -p target/dist/locci
    cp {{env_var_or_default("CARGO_TARGET_DIR", "target")}}/release/locci-proxy {{env_var_or_default("CARGO_TARGET_DIR", "target")}}/release/locci-loadgen {{sim_bin}} target/dist/locci/
    tar -C target/dist -czf target/dist/locci-$(cargo pkgid -p locci-proxy | sed 's/.*[#@]//')-linux-$(uname -m).tar.gz locci
    @ls target/dist/*.tar.gz

# The runtime image locci:latest from a host release build (makes the base image first when there is none).
image: sim-build
    cargo build -q --release -j {{jobs}} -p locci-proxy
    bash scripts/base-image
    rm -rf target/image && mkdir -p target/image
    cp {{env_var_or_default("CARGO_TARGET_DIR", "target")}}/release/locci-proxy {{sim_bin}} docker/config.yaml target/image/
    docker build -t locci:latest -f docker/Dockerfile.runtime target/image
