#!/usr/bin/env bash
#! Profiles at scale (BENCHMARKS.md, "State at scale"): publishes N generated
#! profiles, then times `herald run` from start to `/readyz` 200 with its peak
#! RSS — the first load, a restart after kill -9, and a start with the state
#! directory deleted — and prints the bytes on disk per profile.
#!
#!   scripts/state-scale.sh N        (the broker must run: scripts/broker.sh start)
#!
#! With HERALD_SCALE_FEEDBACK=M, M `herald_sent` records (a day of sends, a
#! third of them SMS) are published to the feedback topic first: the first
#! start reads them into the feedback table, a restart only its tail.
#!
#! With HERALD_SCALE_LEDGER=L, L send-ledger entries (sent in the last
#! week) are published to the ledger changelog, and with
#! HERALD_SCALE_PATTERNS=K, K keys of a `consecutive: 3` rule's state (two
#! readings each) to the pattern changelog: the first start restores them
#! to disk, a restart reads neither again.
#!
#! Uses target/release/herald (cargo build --release first); CARGO_TARGET_DIR honoured.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:?usage: scripts/state-scale.sh N}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"
PORT="${HERALD_BROKER_PORT:-19092}"
BROKERS="127.0.0.1:$PORT"
WORK="$(mktemp -d /tmp/herald-scale.XXXXXX)"
SUFFIX="$(date +%s)"
PROFILES="scale-profiles-$SUFFIX"
SOURCE="scale-tx-$SUFFIX"
ADMIN_PORT=$((20000 + RANDOM % 20000))

"$ROOT/scripts/broker.sh" topics -p 6 -c "$PROFILES" >/dev/null
"$ROOT/scripts/broker.sh" topics -p 1 -c "scale-consent-$SUFFIX" "scale-held-$SUFFIX" >/dev/null
"$ROOT/scripts/broker.sh" topics -p 1 "$SOURCE" "scale-outcomes-$SUFFIX" "scale-dlq-$SUFFIX" \
  "scale-feedback-$SUFFIX" "scale-replies-$SUFFIX" >/dev/null

started=$(date +%s.%N)
"$BIN" simulate --brokers "$BROKERS" --users "$N" --sites 0 --count 0 --duration 0 \
  --profiles-topic "$PROFILES" --transactions-topic "$SOURCE" >/dev/null
echo "published $N profiles in $(echo "$(date +%s.%N) - $started" | bc) s"

JARS="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/kafka-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")/jars"
# Lines "key<TAB>value" on stdin to topic $1.
produce() {
  java -Xmx512m -cp "$JARS/*" org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$BROKERS" --topic "$1" --property parse.key=true \
    --producer-property linger.ms=20 --producer-property batch.size=262144 \
    --producer-property compression.type=lz4 >/dev/null
}
# A compacted topic $1 of $2 partitions, as herald creates its changelogs.
compacted() {
  java -cp "$JARS/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create \
    --if-not-exists --topic "$1" --partitions "$2" --replication-factor 1 \
    --config cleanup.policy=compact >/dev/null
}

FEEDBACK_RECORDS="${HERALD_SCALE_FEEDBACK:-0}"
if [ "$FEEDBACK_RECORDS" -gt 0 ]; then
  started=$(date +%s.%N)
  python3 - "$FEEDBACK_RECORDS" <<'PY' | produce "scale-feedback-$SUFFIX"
import hashlib, json, sys, time
m = int(sys.argv[1]); now = int(time.time() * 1000)
for i in range(m):
    sms = i % 3 == 0
    phone = hashlib.sha256(f"+1415555{i % 10000:04d}".encode()).hexdigest() if sms else None
    print(f"u{i % 1000000}\t" + json.dumps({"type": "herald_sent", "user": f"u{i % 1000000}", "rule": "purchase-notice",
        "key": f"card-{i}", "idempotency_key": f"{i:016x}", "channel": "sms" if sms else "push",
        "time": now - (m - i) * 86_400_000 // m, "phone_sha256": phone}))
PY
  echo "published $FEEDBACK_RECORDS herald_sent records in $(echo "$(date +%s.%N) - $started" | bc) s"
fi

LEDGER_ENTRIES="${HERALD_SCALE_LEDGER:-0}"
if [ "$LEDGER_ENTRIES" -gt 0 ]; then
  started=$(date +%s.%N)
  compacted "scale-$SUFFIX.ledger-changelog" 12
  python3 - "$LEDGER_ENTRIES" "$SOURCE" <<'PY' | produce "scale-$SUFFIX.ledger-changelog"
import hashlib, json, sys, time
m, source = int(sys.argv[1]), sys.argv[2]; now = int(time.time() * 1000); week = 7 * 86_400_000
out = sys.stdout
for i in range(m):
    entry = {"user": f"u{i % 1000000}", "status": "sent", "at_ms": now - (m - i) * week // m,
             "category": "transactional", "rule": "purchase-notice",
             "idempotency_key": hashlib.sha256(i.to_bytes(8, "big")).hexdigest()[:32]}
    out.write(f"{source}/{i % 6}/{i}/purchase-notice/push\t{json.dumps(entry)}\n")
PY
  echo "published $LEDGER_ENTRIES ledger entries in $(echo "$(date +%s.%N) - $started" | bc) s"
fi

PATTERN_KEYS="${HERALD_SCALE_PATTERNS:-0}"
if [ "$PATTERN_KEYS" -gt 0 ]; then
  started=$(date +%s.%N)
  compacted "scale-$SUFFIX.patterns-$SOURCE-changelog" 1
  # 3529ba79eeefaa3a: the fingerprint of `consecutive: 3` (lateness 1m), the rule below.
  python3 - "$PATTERN_KEYS" "$SOURCE" <<'PY' | produce "scale-$SUFFIX.patterns-$SOURCE-changelog"
import json, sys, time
k, source = int(sys.argv[1]), sys.argv[2]; now = int(time.time() * 1000)
out = sys.stdout
for i in range(k):
    events = [{"source": source, "partition": 0, "offset": 2 * i + j, "key": f"fridge-{i}", "user": f"u{i}",
               "time_ms": now - (2 - j) * 60_000, "event_type": "reading", "fields": {"celsius": -1.5 + j},
               "consumed_ms": now - (2 - j) * 60_000} for j in range(2)]
    record = {"rule": "hot-freezer", "fingerprint": "3529ba79eeefaa3a", "key": f"fridge-{i}",
              "newest_ms": now, "touched_ms": now, "applied": 2 * i + 1, "state": {"Consecutive": events}}
    out.write(f"hot-freezer\u0000fridge-{i}\t{json.dumps(record)}\n")
PY
  echo "published $PATTERN_KEYS pattern keys in $(echo "$(date +%s.%N) - $started" | bc) s"
fi

mkdir -p "$WORK/rules"
cat > "$WORK/rules/freezer.yaml" <<EOF
rules:
  - id: hot-freezer
    sources: [$SOURCE]
    match: { event_type: reading }
    pattern: { consecutive: 3 }
    channels: [push]
    category: alert
    template: { title: "Freezer", body: "too warm" }
EOF
cat > "$WORK/herald.toml" <<EOF
[kafka]
bootstrap_servers = "$BROKERS"
group_id = "scale-$SUFFIX"

[sources.$SOURCE]
user_field = "user_id"

[topics]
profiles = "$PROFILES"
outcomes = "scale-outcomes-$SUFFIX"
dead_letter = "scale-dlq-$SUFFIX"
feedback = "scale-feedback-$SUFFIX"
consent = "scale-consent-$SUFFIX"
replies = "scale-replies-$SUFFIX"
held = "scale-held-$SUFFIX"

[rules]
dir = "rules"
watch = false

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[state]
dir = "state"

[channels.push]
provider = "console"
EOF

# Starts herald, waits for /readyz 200; prints seconds and peak RSS; leaves it running.
start_until_ready() {
  local label="$1"
  local t0
  t0=$(date +%s.%N)
  "$BIN" run --config "$WORK/herald.toml" 2>>"$WORK/herald.log" >/dev/null &
  PID=$!
  until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; do
    if ! kill -0 "$PID" 2>/dev/null; then
      echo "herald exited; log: $WORK/herald.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  local t1 rss read
  t1=$(date +%s.%N)
  rss=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$PID/status")
  read=$(curl -s "http://127.0.0.1:$ADMIN_PORT/readyz" | sed -n 's/.*"read":\([0-9]*\).*/\1/p')
  printf '%s: ready in %.1f s, peak RSS %s MB, %s profile records read\n' \
    "$label" "$(echo "$t1 - $t0" | bc)" "$rss" "$read"
}

start_until_ready "first start ($N profiles)"
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
bytes=$(du -sb "$WORK/state" | cut -f1)
echo "state directory: $((bytes / 1024 / 1024)) MB, $((bytes / N)) bytes per profile"

start_until_ready "restart after kill -9"
kill -9 "$PID"
wait "$PID" 2>/dev/null || true

rm -rf "$WORK/state"
start_until_ready "start with the state directory deleted"
kill -TERM "$PID"
wait "$PID" 2>/dev/null || true
echo "log: $WORK/herald.log"
