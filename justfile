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

# Run every test: core unit and property tests, then the end-to-end tests against the real binary.
test:
    cargo build -j {{jobs}} --workspace --all-targets
    cargo test -j {{jobs}} --workspace --no-fail-fast

# Formatting check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy -j {{jobs}} --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Criterion benchmarks of the core's hot paths (release build).
bench:
    cargo bench -j {{jobs}} -p locci-benches

# Everything CI runs.
ci: lint test check-examples

# Make a self-signed certificate for local TLS testing: certs/server.crt and certs/server.key (localhost, 127.0.0.1).
tls-cert:
    mkdir -p certs
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 365 -subj /CN=localhost \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout certs/server.key -out certs/server.crt 2>/dev/null
    @echo "wrote certs/server.crt and certs/server.key; set server.tls.cert_path/key_path to them"

# Start Prometheus and Grafana (needs the prom/prometheus and grafana/grafana images) for a locci on this host.
monitor:
    printf '%s' "${LOCCI_API_KEY:-}" > monitoring/.api_key
    docker compose -f monitoring/docker-compose.monitoring.yaml up -d
    @echo "Grafana: http://127.0.0.1:3000 (admin/admin), Prometheus: http://127.0.0.1:9090"
