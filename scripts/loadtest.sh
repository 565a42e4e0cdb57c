#!/usr/bin/env bash
#! The load-and-latency bench: herald against a bare rdkafka consumer on the
#! same local broker in the same run. Arguments go to `herald loadtest`, e.g.
#!   scripts/loadtest.sh --rate 2000 --duration 30 --rules 10000
#! Writes target/loadtest/loadtest-<rules>-<rate>.{json,svg,png}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh demo
cargo build --release --quiet
export HERALD_BROKER_PORT="${HERALD_BROKER_PORT:-$(scripts/broker.sh free-port)}"
scripts/broker.sh start
trap 'scripts/broker.sh stop' EXIT
"${CARGO_TARGET_DIR:-target}/release/herald" loadtest --brokers "127.0.0.1:$HERALD_BROKER_PORT" "$@"
