#!/usr/bin/env bash
#! The fault suite: real herald processes (the release binary) on real Apache
#! Kafka, killed, stopped, partitioned from their broker and provider, and fed
#! hostile records; reports lost / duplicate / failed / recovery per scenario
#! and exits non-zero when a guarantee does not hold.
#!
#!   scripts/faults.sh            the full suite (~60 min); writes RELIABILITY.md
#!   scripts/faults.sh --short    the short version CI runs (~6 min)
#!   scripts/faults.sh --only kill9 --only hostile    chosen scenarios
#!
#! Starts and stops its own brokers (one node, and three for broker-leader);
#! herald logs and configs go to target/faults/<scenario>-<run>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh demo
scripts/broker.sh install
echo "building herald and herald-faults (release)…" >&2
cargo build --release --quiet --bin herald --bin herald-faults
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
args=(--herald "$TARGET/release/herald" --root "$ROOT" --work "$TARGET/faults")
short=false
for a in "$@"; do [[ "$a" == "--short" || "$a" == "--only" ]] && short=true; done
if ! $short; then args+=(--out "$ROOT/RELIABILITY.md"); fi
"$TARGET/release/herald-faults" "${args[@]}" "$@"
