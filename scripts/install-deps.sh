#!/usr/bin/env bash
#! Installs what building herald needs beyond the Rust toolchain: a C compiler,
#! pkg-config, OpenSSL and zlib headers (librdkafka is built from source by rdkafka-sys),
#! Java 17+ and Maven (the local Apache Kafka broker comes from Maven Central),
#! Python (free ports, the fault suite's report), and Chromium (the live rules
#! page is tested in headless Chromium). Does nothing when all are present.
set -euo pipefail
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v python3 >/dev/null || missing+=(python3)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v chromium >/dev/null || missing+=(chromium)
if command -v dpkg-query >/dev/null; then
  for pkg in libssl-dev zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
