#!/usr/bin/env bash
# A 3-node, 2-zone sfumato cluster on this machine (`sfumato media`), for trying cascading and gateway
# placement by hand. Node a (zone z1) is the seed; b and c (zone z2) join through it. Ctrl-C stops all three.
#
#   scripts/cluster.sh                 # build (release) and run
#   scripts/cluster.sh --no-build      # use target/release/sfumato as it is
#
# Environment: CLUSTER_CORES (cores per node, default 1), CLUSTER_BASE_PORT (default 3100: node i gets
# HTTP base+i, QUIC 4433+10i, RTMP 1935+10i, WebRTC 20000+100i...), SFUMATO_SECRET (default: dev mode),
# RUST_LOG. Logs go to $CLUSTER_LOG_DIR (default: a temporary directory, printed).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
if [ "$BUILD" = 1 ]; then
    cargo build --release -p sfumato
fi
BIN=target/release/sfumato
CORES=${CLUSTER_CORES:-1}
BASE=${CLUSTER_BASE_PORT:-3100}
LOGS=${CLUSTER_LOG_DIR:-$(mktemp -d /tmp/sfumato-cluster.XXXXXX)}
mkdir -p "$LOGS"
export RUST_LOG=${RUST_LOG:-info,str0m=warn}

NAMES=(a b c)
ZONES=(z1 z2 z2)
PIDS=()

stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping cluster..."
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "logs kept in $LOGS"
}
trap stop INT TERM EXIT

SEED="127.0.0.1:4433"
for i in 0 1 2; do
    name=${NAMES[$i]}
    args=(media --node-id "$name" --zone "${ZONES[$i]}" --cores "$CORES" --no-pin
          --http-addr 127.0.0.1 --http-port $((BASE + i)) --webrtc-port $((20000 + 100 * i)) --webrtc-ips 127.0.0.1
          --rtmp-port $((1935 + 10 * i)) --quic-port $((4433 + 10 * i)) --advertise-ip 127.0.0.1)
    [ "$i" -gt 0 ] && args+=(--seeds "$SEED")
    "$BIN" "${args[@]}" >"$LOGS/$name.log" 2>&1 &
    PIDS+=($!)
done

for i in 0 1 2; do
    url="http://127.0.0.1:$((BASE + i))"
    for _ in $(seq 1 100); do
        curl -fs "$url/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
done
sleep 2

echo "sfumato cluster: 3 nodes, 2 zones (a: z1; b, c: z2), seed $SEED, logs in $LOGS"
for i in 0 1 2; do
    echo "  node ${NAMES[$i]} (zone ${ZONES[$i]}): http://127.0.0.1:$((BASE + i))/  (demo page)" \
         " WHIP/WHEP http://127.0.0.1:$((BASE + i))/whip|whep/<room>  RTMP rtmp://127.0.0.1:$((1935 + 10 * i))/live/<room>" \
         " QUIC 127.0.0.1:$((4433 + 10 * i))"
done
echo "  members: curl -s http://127.0.0.1:$BASE/healthz | jq .cluster"
echo "Publish on one node and watch on another; the second node cascades the room from the first. Ctrl-C stops."
while true; do
    for pid in "${PIDS[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "a node exited; see $LOGS"
            exit 1
        fi
    done
    sleep 1
done
