#!/usr/bin/env bash
#! Installs what one use of herald needs beyond the Rust toolchain, and nothing
#! more: `scripts/install-deps.sh demo` (also the load test and the fault suite)
#! needs a C compiler, make, pkg-config, OpenSSL and zlib headers (librdkafka
#! is built from source by rdkafka-sys), Java 17+ and Maven (the local Apache
#! Kafka broker comes from Maven Central) and Python (free ports, the fault
#! suite's report); `scripts/install-deps.sh test` adds Chromium, in which the
#! live rules page is tested. `--list demo|test` prints the Debian packages
#! that use needs, one per line, and installs nothing. Does nothing when all
#! are present.
set -euo pipefail
list=false
if [[ "${1:-}" == "--list" ]]; then
  list=true
  shift
fi
purpose="${1:-test}"
# command:package pairs; a package with no command is checked with dpkg.
needs=(cc:gcc make:make pkg-config:pkg-config python3:python3 java:openjdk-17-jre-headless mvn:maven :libssl-dev :zlib1g-dev)
case "$purpose" in
  demo) ;;
  test) needs+=(chromium:chromium) ;;
  *) echo "install-deps: unknown use '$purpose' (demo or test)" >&2; exit 2 ;;
esac
if $list; then
  for need in "${needs[@]}"; do echo "${need#*:}"; done
  exit 0
fi
missing=()
for need in "${needs[@]}"; do
  cmd="${need%%:*}" pkg="${need#*:}"
  if [[ -n "$cmd" ]]; then
    command -v "$cmd" >/dev/null || missing+=("$pkg")
  elif command -v dpkg-query >/dev/null; then
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
