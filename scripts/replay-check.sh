#!/usr/bin/env bash
# The parallel replay decides what the sequential one does, at full size:
# N (default 100,000) seeded card transactions replayed with --jobs 1 and
# --jobs 2 on the release build. The reports must match (but for the timing
# line) and so must the outcomes, sorted, with the provider call's wall-clock
# times and the recording provider's message ids left out. Exits 1 on a
# difference. The unit test `a_parallel_replay_decides_what_the_sequential_one_does`
# checks 20,000 events in a debug build; this is the 100,000 of the issue.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-100000}
gen=../shared/tools/gen-replay-input.py
[[ -f $gen ]] || { echo "replay-check: $gen not found (the shared tools beside the project)" >&2; exit 2; }
bin="${CARGO_TARGET_DIR:-target}/release/herald"
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$gen" "$work" "$n" >/dev/null
for jobs in 1 2; do
  "$bin" replay --input "$work/events.jsonl" --profiles "$work/profiles.jsonl" \
    --jobs "$jobs" --out "$work/out-$jobs.jsonl" >"$work/report-$jobs.txt" 2>/dev/null
  tail -1 "$work/report-$jobs.txt"
done
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]

def outcomes(path):
    rows = []
    for line in open(path):
        o = json.loads(line)
        o.pop("provider_message_id", None)
        for t in ("request_sent_ms", "answered_ms"):
            o.get("timings", {}).pop(t, None)
        rows.append(json.dumps(o, sort_keys=True))
    return sorted(rows)

def report(path):
    return [l for l in open(path) if " events in " not in l]

a, b = outcomes(f"{work}/out-1.jsonl"), outcomes(f"{work}/out-2.jsonl")
if not a:
    sys.exit("replay-check: no outcomes at all")
if a != b:
    diff = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if len(a) == len(b) else None
    sys.exit(f"replay-check: outcomes differ ({len(a)} against {len(b)}; first at {diff})")
if report(f"{work}/report-1.txt") != report(f"{work}/report-2.txt"):
    sys.exit("replay-check: the reports differ")
print(f"replay-check: --jobs 1 and --jobs 2 agree on {len(a)} outcomes")
PY
