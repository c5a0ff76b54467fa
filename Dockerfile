# Multi-stage build for users with a registry: `docker build -t locci .`
# The runtime stage has the same layout as docker/Dockerfile.runtime (binary, config path, ports, user).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p locci-proxy && cp target/release/locci-proxy /locci-proxy
# The seeded simulator (just sim-build) for the reload gate.
RUN RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/sim cargo build --profile sim -p locci-sim \
 && cp target/sim/sim/locci-sim /locci-sim

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home locci && mkdir -p /etc/locci
COPY --from=build /locci-proxy /usr/local/bin/locci-proxy
COPY --from=build /locci-sim /usr/local/bin/locci-sim
COPY docker/config.yaml /etc/locci/config.yaml
USER 10001
EXPOSE 8484 8485
WORKDIR /etc/locci
ENTRYPOINT ["/usr/local/bin/locci-proxy"]
CMD ["--config", "/etc/locci/config.yaml"]
