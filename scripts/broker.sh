#!/usr/bin/env bash
#! Apache Kafka (KRaft) on loopback for development, tests, the demo and the fault suite.
#
#   scripts/broker.sh install            Kafka's jars from Maven Central into ~/.cache/herald/kafka-<version>
#   scripts/broker.sh start              one node on 127.0.0.1:${HERALD_BROKER_PORT:-19092}; waits until it serves
#   scripts/broker.sh stop               stop the node this script started (its data goes with it)
#   scripts/broker.sh status             say whether it runs
#   scripts/broker.sh topics [-p N] [-c] T…   create topics (idempotent; N partitions, default 3; -c compacted)
#   scripts/broker.sh free-port          print 19092 if it and 19093 are free, else two free ports' first
#   scripts/broker.sh cluster start|stop|status|bootstrap
#   scripts/broker.sh cluster kill|restart|freeze|thaw|pid N
#                                        three nodes on ${HERALD_CLUSTER_PORT:-29092}+0..2, replication
#                                        factor 3, min.insync.replicas 2; kill -9, restart (same
#                                        log.dirs), SIGSTOP and SIGCONT of node N (1-3)
#
# Needs Java 17+ and Maven (scripts/install-deps.sh installs them). Each start
# formats fresh storage, so a run never sees an earlier run's topics.
# HERALD_CACHE moves the cache; HERALD_KAFKA_HEAP sets the JVM heap (default 1g, reserved
# whole at start), HERALD_KAFKA_GC the collector's options (default: those Kafka's own
# kafka-run-class.sh passes); each node logs its pauses to gc.log beside broker.log.
# A heap that started at 128m and grew on demand kept G1's young generation at ~10 MB:
# under herald's load test (1,000 events/s, ~8 records each) it collected 3-25 times a
# second, 22-59 ms of pauses each second; at 1g from the start, every ~2 s, 5-10 ms a
# second in pauses of 8-22 ms (BENCHMARKS.md, "the broker's collector").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
JARS="$CACHE/kafka-$KAFKA_VERSION/jars"
RUN="$CACHE/kafka-run"
PORT="${HERALD_BROKER_PORT:-19092}"
CLUSTER_PORT="${HERALD_CLUSTER_PORT:-29092}"
HEAP="${HERALD_KAFKA_HEAP:-1g}"
JVM_GC="${HERALD_KAFKA_GC:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
LOG4J="$ROOT/scripts/kafka/log4j2.properties"
LOG4J_TOOLS="$ROOT/scripts/kafka/log4j2-tools.properties"

install_kafka() {
  if [[ -f "$JARS/.complete" ]]; then return 0; fi
  command -v java >/dev/null || { echo "broker: java not found; run scripts/install-deps.sh" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "broker: mvn not found; run scripts/install-deps.sh" >&2; exit 1; }
  echo "broker: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $JARS" >&2
  rm -rf "$JARS"
  mkdir -p "$JARS"
  mvn -B -q -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$JARS" >&2
  touch "$JARS/.complete"
}

# Kafka's command-line tools: a small, quick JVM that logs warnings only.
java_cmd() {
  java -Xms64m -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$JARS/*" "$@"
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# node.properties for one node. $1 dir, $2 node id, $3 broker port, $4 controller port, $5 mode.
write_properties() {
  local dir="$1" id="$2" port="$3" cport="$4" mode="$5"
  mkdir -p "$dir/data"
  {
    echo "process.roles=broker,controller"
    echo "node.id=$id"
    echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "controller.listener.names=CONTROLLER"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    echo "log.dirs=$dir/data"
    echo "group.initial.rebalance.delay.ms=0"
    echo "log.cleaner.dedupe.buffer.size=2097152"
    echo "num.io.threads=2"
    echo "num.network.threads=2"
    echo "num.partitions=3"
    echo "auto.create.topics.enable=false"
    echo "log.segment.bytes=67108864"
    if [[ "$mode" == single ]]; then
      echo "controller.quorum.bootstrap.servers=127.0.0.1:$cport"
      echo "offsets.topic.replication.factor=1"
      echo "offsets.topic.num.partitions=5"
      echo "transaction.state.log.replication.factor=1"
      echo "transaction.state.log.min.isr=1"
      echo "share.coordinator.state.topic.replication.factor=1"
      echo "share.coordinator.state.topic.min.isr=1"
    else
      echo "controller.quorum.voters=$(cluster_voters)"
      echo "default.replication.factor=3"
      echo "min.insync.replicas=2"
      echo "offsets.topic.replication.factor=3"
      echo "offsets.topic.num.partitions=5"
      echo "transaction.state.log.replication.factor=3"
      echo "transaction.state.log.min.isr=2"
      echo "share.coordinator.state.topic.replication.factor=3"
      echo "share.coordinator.state.topic.min.isr=2"
      echo "broker.session.timeout.ms=3000"
      echo "broker.heartbeat.interval.ms=500"
    fi
  } >"$dir/node.properties"
}

# Starts the node whose properties are in $1 (already formatted) in the background.
launch() {
  local dir="$1"
  : >"$dir/broker.log"
  nohup bash -c "exec java -Xms$HEAP -Xmx$HEAP $JVM_GC -Xlog:gc:file='$dir/gc.log':uptime -Djava.awt.headless=true \
    -Dlog4j2.configurationFile='$LOG4J' -cp '$JARS/*' kafka.Kafka '$dir/node.properties'" \
    >>"$dir/broker.log" 2>&1 &
  echo $! >"$dir/pid"
}

# Waits until the node in $1 logs that it started; $2 seconds at most.
wait_started() {
  local dir="$1" limit="$2"
  for _ in $(seq 1 $((limit * 5))); do
    if grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "broker: the node in $dir exited; its log:" >&2
      tail -30 "$dir/broker.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "broker: the node in $dir did not start within ${limit} s; see $dir/broker.log" >&2
  return 1
}

stop_node() {
  local dir="$1" pid
  [[ -f "$dir/pid" ]] || return 0
  pid="$(cat "$dir/pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

start_single() {
  install_kafka
  local dir="$RUN/node-$PORT" cport=$((PORT + 1))
  if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "broker: already running on 127.0.0.1:$PORT (pid $(cat "$dir/pid"))" >&2
    return 0
  fi
  if answers "$PORT" || answers "$cport"; then
    echo "broker: port $PORT or $cport is taken by another process; set HERALD_BROKER_PORT" >&2
    return 1
  fi
  rm -rf "$dir"
  write_properties "$dir" 1 "$PORT" "$cport" single
  java_cmd kafka.tools.StorageTool format --standalone --ignore-formatted \
    -t "$(java_cmd kafka.tools.StorageTool random-uuid)" -c "$dir/node.properties" >/dev/null
  launch "$dir"
  wait_started "$dir" 90
  echo "broker: Apache Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (pid $(cat "$dir/pid"), log $dir/broker.log)" >&2
}

stop_single() {
  local dir="$RUN/node-$PORT"
  if [[ -f "$dir/pid" ]]; then
    stop_node "$dir"
    echo "broker: stopped 127.0.0.1:$PORT" >&2
  fi
  rm -rf "$dir"
}

create_topics() {
  install_kafka
  local partitions=3 replication=1 bootstrap="127.0.0.1:$PORT" configs=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -p) partitions="$2"; shift 2 ;;
      -c) configs=(--config cleanup.policy=compact); shift ;;
      -r) replication="$2"; shift 2 ;;
      -b) bootstrap="$2"; shift 2 ;;
      *) break ;;
    esac
  done
  for t in "$@"; do
    java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create \
      --if-not-exists --topic "$t" --partitions "$partitions" --replication-factor "$replication" "${configs[@]}" >/dev/null
  done
}

# 19092 when it and its controller port are free, else a free pair.
free_port() {
  if ! answers "$PORT" && ! answers $((PORT + 1)); then echo "$PORT"; return; fi
  python3 - <<'PY'
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()
PY
}

cluster_dir() { echo "$RUN/cluster-$CLUSTER_PORT/node-$1"; }
cluster_voters() {
  echo "1@127.0.0.1:$((CLUSTER_PORT + 10)),2@127.0.0.1:$((CLUSTER_PORT + 11)),3@127.0.0.1:$((CLUSTER_PORT + 12))"
}
cluster_bootstrap() {
  echo "127.0.0.1:$CLUSTER_PORT,127.0.0.1:$((CLUSTER_PORT + 1)),127.0.0.1:$((CLUSTER_PORT + 2))"
}
node_arg() {
  [[ "${1:-}" =~ ^[123]$ ]] || { echo "broker: name a node, 1, 2 or 3" >&2; exit 2; }
}

cluster() {
  local what="${1:-}"
  shift || true
  case "$what" in
    start)
      install_kafka
      local cluster_id
      cluster_id="$(java_cmd kafka.tools.StorageTool random-uuid)"
      rm -rf "$RUN/cluster-$CLUSTER_PORT"
      for n in 1 2 3; do
        local dir
        dir="$(cluster_dir "$n")"
        if answers $((CLUSTER_PORT + n - 1)); then
          echo "broker: port $((CLUSTER_PORT + n - 1)) is taken; set HERALD_CLUSTER_PORT" >&2
          return 1
        fi
        write_properties "$dir" "$n" $((CLUSTER_PORT + n - 1)) $((CLUSTER_PORT + 9 + n)) cluster
        java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/node.properties" >/dev/null
      done
      # None finishes starting without a quorum: start all three, then wait.
      for n in 1 2 3; do launch "$(cluster_dir "$n")"; done
      for n in 1 2 3; do wait_started "$(cluster_dir "$n")" 120; done
      echo "broker: three-node Apache Kafka $KAFKA_VERSION on $(cluster_bootstrap)" >&2
      ;;
    stop)
      for n in 1 2 3; do stop_node "$(cluster_dir "$n")"; done
      rm -rf "$RUN/cluster-$CLUSTER_PORT"
      echo "broker: cluster stopped" >&2
      ;;
    status)
      for n in 1 2 3; do
        local dir
        dir="$(cluster_dir "$n")"
        if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
          echo "node $n: running on 127.0.0.1:$((CLUSTER_PORT + n - 1)) (pid $(cat "$dir/pid"))"
        else
          echo "node $n: not running"
        fi
      done
      ;;
    bootstrap) cluster_bootstrap ;;
    pid) node_arg "${1:-}"; cat "$(cluster_dir "$1")/pid" ;;
    kill)
      node_arg "${1:-}"
      local dir
      dir="$(cluster_dir "$1")"
      kill -9 "$(cat "$dir/pid")" 2>/dev/null || true
      rm -f "$dir/pid"
      echo "broker: node $1 killed (kill -9)" >&2
      ;;
    restart)
      node_arg "${1:-}"
      local dir
      dir="$(cluster_dir "$1")"
      stop_node "$dir"
      launch "$dir"
      wait_started "$dir" 120
      echo "broker: node $1 restarted (pid $(cat "$dir/pid"))" >&2
      ;;
    freeze) node_arg "${1:-}"; kill -STOP "$(cat "$(cluster_dir "$1")/pid")" ;;
    thaw) node_arg "${1:-}"; kill -CONT "$(cat "$(cluster_dir "$1")/pid")" ;;
    *) usage ;;
  esac
}

usage() { sed -n '3,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

case "${1:-}" in
  install) install_kafka ;;
  start) start_single ;;
  stop) stop_single ;;
  status)
    if answers "$PORT"; then echo "running on 127.0.0.1:$PORT"; else echo "not running"; exit 1; fi
    ;;
  pid) cat "$RUN/node-$PORT/pid" ;;
  freeze) kill -STOP "$(cat "$RUN/node-$PORT/pid")" ;;
  thaw) kill -CONT "$(cat "$RUN/node-$PORT/pid")" ;;
  topics) shift; create_topics "$@" ;;
  free-port) free_port ;;
  cluster) shift; cluster "$@" ;;
  *) usage ;;
esac
