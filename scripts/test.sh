#!/usr/bin/env bash
#! The test command: installs what is missing, starts the local broker, runs
#! every test (unit, end-to-end on the broker, CLI), stops the broker.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh test
export HERALD_BROKER_PORT="${HERALD_BROKER_PORT:-$(scripts/broker.sh free-port)}"
scripts/broker.sh start
trap 'scripts/broker.sh stop' EXIT
export HERALD_TEST_BROKERS="127.0.0.1:$HERALD_BROKER_PORT"
cargo test --all-targets "$@"
