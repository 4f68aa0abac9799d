#!/usr/bin/env bash
# Build and run a single sfumato node with dev defaults (secret `insecure`, HTTP :3000, WebRTC UDP 10000+core).
# On a fresh Debian machine it first installs the C libraries the build links (libopus via pkg-config).
# Extra arguments go to `sfumato standalone`, e.g.: scripts/standalone.sh --cores 2 --public-ip 203.0.113.7
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists opus 2>/dev/null; then
  echo "installing build dependencies: libopus-dev pkg-config"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libopus-dev pkg-config >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; }
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install a Rust toolchain (>= 1.89) first" >&2; exit 1; }
exec cargo run --release -p sfumato -- standalone "$@"
