#!/usr/bin/env bash
#! The one-command demo: builds herald, starts the local broker, and runs
#! `herald demo` (topics, profiles, sample rules, a realistic stream, a provider
#! stand-in, a live feed and a summary). Extra arguments go to `herald demo`,
#! e.g. `scripts/demo.sh --duration 120 --rate 50`. Stops everything on exit or Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh demo
echo "building herald (release)…" >&2
cargo build --release --quiet
export HERALD_BROKER_PORT="${HERALD_BROKER_PORT:-$(scripts/broker.sh free-port)}"
scripts/broker.sh start
trap 'scripts/broker.sh stop' EXIT
"${CARGO_TARGET_DIR:-target}/release/herald" demo --brokers "127.0.0.1:$HERALD_BROKER_PORT" "$@"
