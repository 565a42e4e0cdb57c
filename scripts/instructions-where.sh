#!/usr/bin/env bash
# Where herald's instructions per event go: callgrind over the same replay as
# ../shared/tools/instructions-per-event.sh (N and 2N seeded card transactions,
# the sample rules), each function's inclusive count at 2N less its count at N,
# divided by N, so start-up cancels out as it does in that tool's total.
#
# Usage (from the project root):
#   scripts/instructions-where.sh [N] [TOP]              the TOP functions (default 60)
#   CALLEES='decide::\{\{closure\}\}' scripts/instructions-where.sh   what the matching functions call
# HERALD_BIN (default target/release/herald) is the binary; needs valgrind and python3.
# WORK=<dir> keeps callgrind's files there; with REUSE=1 as well, a second
# call reads them again instead of running callgrind (another CALLEES query).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${HERALD_BIN:-$root/target/release/herald}
n=${1:-3000}
top=${2:-60}
gen="$root/../shared/tools/gen-replay-input.py"
[[ -x $bin ]] || { echo "no herald binary at $bin (cargo build --release)"; exit 2; }
[[ -f $gen ]] || { echo "no $gen (the shared tools sit beside the project)"; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install -y valgrind"; exit 2; }
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
[[ -n ${WORK:-} ]] || trap 'rm -rf "$work"' EXIT
python3 "$gen" "$work" $((2 * n)) >/dev/null
head -n "$n" "$work/events.jsonl" >"$work/half.jsonl"
for run in half events; do
  [[ -n ${REUSE:-} && -f $work/$run.tree ]] && continue
  (cd "$root" && valgrind --tool=callgrind --callgrind-out-file="$work/$run.out" "$bin" replay \
    --input "$work/$run.jsonl" --profiles "$work/profiles.jsonl" --config config/herald.toml \
    --rules rules >/dev/null 2>"$work/$run.err") || { tail -5 "$work/$run.err"; exit 1; }
  callgrind_annotate --tree=calling --inclusive=yes --auto=no --threshold=100 \
    "$work/$run.out" >"$work/$run.tree" 2>/dev/null
done
collected() { grep -Eo 'Collected : [0-9]+' "$work/$1.err" | awk '{print $3}'; }
echo "instructions per event: $((($(collected events) - $(collected half)) / n)) (inclusive, per event, by function:)"
python3 - "$work" "$n" "$top" "${CALLEES:-}" "$bin" "$root" <<'EOF'
import re, sys
work, n, top, callees, binary, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
line = re.compile(r'\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+([*>])\s+(.*)')

def load(path):
    """{function: inclusive}, and {function: {callee: inclusive}}."""
    total, calls = {}, {}
    for block in open(path).read().split('\n\n'):
        caller = None
        for text in block.split('\n'):
            m = line.match(text)
            if not m:
                continue
            count = int(m.group(1).replace(',', ''))
            name = re.sub(r'\s*\(\d[\d,]*x\)', '', m.group(3))
            # A function is listed once per file its lines come from (code
            # inlined into it); each entry is counted apart.
            name = re.sub(r'^/(rustc/\w+/library|root/.cargo/registry/src/[^/]+)/', '', name)
            name = name.replace(' [' + binary + ']', '').replace(root + '/', '')
            if m.group(2) == '*':
                caller = name
                total[name] = total.get(name, 0) + count
            elif caller:
                calls.setdefault(caller, {})
                calls[caller][name] = calls[caller].get(name, 0) + count
    return total, calls

(a, a_calls), (b, b_calls) = load(f'{work}/half.tree'), load(f'{work}/events.tree')
per_event = lambda x, y: (y - x) / n
if callees:
    for fn in (f for f in b_calls if re.search(callees, f)):
        print(f'== {per_event(a.get(fn, 0), b[fn]):9.0f}  {fn[:150]}')
        rows = sorted(((per_event(a_calls.get(fn, {}).get(k, 0), v), k) for k, v in b_calls[fn].items()), reverse=True)
        for v, k in rows[:top]:
            if abs(v) >= 50:
                print(f'   {v:9.0f}  {k[:150]}')
else:
    rows = sorted(((per_event(a.get(k, 0), v), k) for k, v in b.items()), reverse=True)
    for v, k in rows[:top]:
        print(f'{v:9.0f}  {k[:170]}')
EOF
