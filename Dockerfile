# herald: build in the Rust image, run on Debian slim.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The service alone by default: no demo, load test, stand-in or plot renderer
# (the `tools` feature). docker-compose.yml builds its stand-in with FEATURES="".
ARG FEATURES="--no-default-features"
RUN cargo build --release --locked $FEATURES --bin herald

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER nobody
EXPOSE 9464
ENTRYPOINT ["herald"]
CMD ["run", "--config", "/etc/herald/herald.toml"]
