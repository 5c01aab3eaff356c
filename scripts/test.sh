#!/usr/bin/env bash
# Runs the whole Trellis test suite on a Debian machine with a Rust toolchain: installs what the
# tests need from apt where it is missing, then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need: nats-server for the JetStream storage backend's tests,
# etcd-server for the etcd metadata store's. Building needs no protoc: protos compile with protox.
packages=(nats-server etcd-server)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "Installing test dependencies: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

# A one-off build gains nothing from incremental state, which would only take up disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Tests that need nats-server fail instead of skipping when it is missing.
export TRELLIS_REQUIRE_NATS=1
# Likewise for etcd.
export TRELLIS_REQUIRE_ETCD=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
