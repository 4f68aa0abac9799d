#!/usr/bin/env bash
# The standard benchmark: server pinned to CPU 0, harness to CPU 1, one fresh server per scenario.
#
#   scripts/bench.sh                  # build, run, write perf/results/<date>-bench.{json,md}
#   scripts/bench.sh --compare        # ... and print new/old ratios against the newest older results file
#   scripts/bench.sh --compare FILE   # ... against FILE
#   scripts/bench.sh --no-build       # use the binaries already in target/release
#   scripts/bench.sh --no-janus       # skip the Janus runs
#   scripts/bench.sh --quick          # a shorter set (~2.5 min): 5 s windows, no GSO floor/rooms/churn, smaller sweeps
#   scripts/bench.sh --janus-config DIR   # only write the Janus config used here into DIR, and exit
#
# Scenarios (about 10 minutes in all, with Janus): floor 50 (sendmmsg), floor 50 (GSO), floor 50 (GSO, viewers
# with UDP_GRO), floor 200, fanout 1 and fanout 50 (alternating windows; the report's cost model:
# fixed CPU a second + CPU per forwarded packet), fanout 50 (viewers with UDP_GRO), fanout 200, fanout 50 with the server on every core (its added latency as deployed), rooms 10 × (1 publisher, 4 viewers), churn 10 joins/s for 15 s, rtmp (ffmpeg → 20 WHEP
# viewers, if ffmpeg is installed), a max-viewers sweep (loss ≤ 1 %), fanout 50 with the server in a network
# namespace behind a veth pair (`*-veth`: the viewers' kernel receive path runs on the veth's NAPI thread on the
# harness CPU, as on a separate machine, instead of on the server's CPU as over loopback; with the kernel's UDP
# segmentation offload on the server's side, and `-nouso` without it; windows interleaved with fanout-1's and
# fanout-50's — needs root, ip, tc and ethtool, skipped otherwise), and — if `janus` is installed
# (apt-get install janus) — the same fan-out 50 and 200 and the same sweep through Janus's streaming
# plugin, pinned like the server, with sfumato/Janus tables. Then PNG charts (latency CDF, CPU per
# packet vs viewers) next to the results: perf/results/<date>-{latency-cdf,cpu-per-packet}.png
# (<date>.2-... for a second run the same day). Plus the cluster: `cascade-3x25` (`--quick`: `cascade-2x25`),
# 3 (2) `sfumato media` nodes on loopback, all pinned to the server CPU with --cores 1, the publisher on
# node a (zone z1), 25 viewers on each node (b, c: zone z2): added latency per cascade hop, link throughput.
# Environment: BENCH_DURATION (measured window per scenario, default 10s; 5s with --quick),
# BENCH_SWEEP ("START STEP MAX" of the sweeps, default "100 150 700"; "100 150 400" with --quick),
# BENCH_RESULTS (where results go, default perf/results), BENCH_SERVER_CPU (0), BENCH_HARNESS_CPU (1), BENCH_REPEAT (3; 1 with --quick: the fan-out runs, sfumato's
# and Janus's, run that many times and the one with the median server CPU per packet is kept). The machine
# should be otherwise idle: the table's "other CPU %" column says how busy it was during each window.
# BENCH_VETH_NET: the first three octets of the veth runs' /30 (default 10.213.77), if that clashes here.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=1
JANUS=1
QUICK=0
JANUS_CONFIG_ONLY=""
COMPARE=""
DO_COMPARE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --compare)
            DO_COMPARE=1
            if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then COMPARE=$2; shift; fi ;;
        --no-janus) JANUS=0 ;;
        --quick) QUICK=1 ;;
        --janus-config) JANUS_CONFIG_ONLY=${2:?--janus-config needs a directory}; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    DURATION=${BENCH_DURATION:-5s}
    read -r SWEEP_START SWEEP_STEP SWEEP_MAX <<<"${BENCH_SWEEP:-100 150 400}"
else
    DURATION=${BENCH_DURATION:-10s}
    read -r SWEEP_START SWEEP_STEP SWEEP_MAX <<<"${BENCH_SWEEP:-100 150 700}"
fi
SERVER_CPU=${BENCH_SERVER_CPU:-0}
HARNESS_CPU=${BENCH_HARNESS_CPU:-1}
SFU_BIN=$ROOT/target/release/sfumato
PERF_BIN=$ROOT/target/release/sfumato-perf
DATE=$(date +%F)
RESULTS=${BENCH_RESULTS:-$ROOT/perf/results}
# A second run on the same day gets <date>.2-, <date>.3-, ... (sorts after <date>-, so --compare finds it).
STAMP=$DATE
n=2
while [ -e "$RESULTS/$STAMP-bench.json" ]; do STAMP=$DATE.$n; n=$((n + 1)); done
OUT_JSON=$RESULTS/$STAMP-bench.json
OUT_MD=$RESULTS/$STAMP-bench.md
WORK=$(mktemp -d /tmp/sfumato-bench.XXXXXX)
SFU_PID=""
CLUSTER_PIDS=()
# The veth set-up (veth_setup): a network namespace for the server, a veth pair, one /30 between them.
VETH_NS=sfumato-bench-$$
VETH_SRV=sfbs$$
VETH_HAR=sfbh$$
VETH_SERVER_IP=${BENCH_VETH_NET:-10.213.77}.1
VETH_HARNESS_IP=${BENCH_VETH_NET:-10.213.77}.2
VETH_OK=0
VETH_WHY=""
VETH_QDISC=""
VETH_NOUSO=0
# JSON fields merged into each result `run` writes while it is set (the network set-up of veth runs, which
# the report's notes column, cost model and charts read).
RUN_SETUP=""

cleanup() {
    if [ -n "$SFU_PID" ] && kill -0 "$SFU_PID" 2>/dev/null; then
        kill "$SFU_PID" 2>/dev/null || true
        wait "$SFU_PID" 2>/dev/null || true
    fi
    stop_cluster
    veth_teardown
}
trap cleanup EXIT

# write_janus_config DIR HTTP_PORT VIDEO_RTP_PORT AUDIO_RTP_PORT [HTTP_IP]: Janus with only the HTTP transport and
# the streaming plugin, one static event loop (the most efficient setting on one core), ICE-lite, and
# mountpoint 1 fed with plain RTP (VP8 pt 96, Opus pt 111) by the harness's publisher.
write_janus_config() {
    local dir=$1 http=$2 vport=$3 aport=$4 http_ip=${5:-127.0.0.1} lib=/usr/lib/x86_64-linux-gnu/janus
    [ -d "$lib" ] || lib=$(dirname "$(find /usr/lib -name libjanus_streaming.so -print -quit 2>/dev/null)")/..
    mkdir -p "$dir"
    cat >"$dir/janus.jcfg" <<EOF
general: {
	configs_folder = "$dir"
	plugins_folder = "$lib/plugins"
	transports_folder = "$lib/transports"
	events_folder = "$lib/events"
	loggers_folder = "$lib/loggers"
	debug_level = 3
	session_timeout = 120
	event_loops = 1
}
media: {
	rtp_port_range = "46000-47999"
}
nat: {
	ice_lite = true
}
plugins: {
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so,libjanus_voicemail.so"
}
transports: {
	disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}
events: {
	broadcast = false
}
EOF
    cat >"$dir/janus.transport.http.jcfg" <<EOF
general: {
	base_path = "/janus"
	http = true
	port = $http
	ip = "$http_ip"
	https = false
}
admin: {
	admin_http = false
}
EOF
    cat >"$dir/janus.plugin.streaming.jcfg" <<EOF
general: {
}
bench: {
	type = "rtp"
	id = 1
	description = "sfumato-perf bench"
	audio = true
	video = true
	audioport = $aport
	audiopt = 111
	audiocodec = "opus"
	videoport = $vport
	videopt = 96
	videocodec = "vp8"
	secure = false
}
EOF
}

if [ -n "$JANUS_CONFIG_ONLY" ]; then
    write_janus_config "$JANUS_CONFIG_ONLY" 8088 5004 5002
    echo "bench.sh: wrote $JANUS_CONFIG_ONLY (start: taskset -c 0 janus -C $JANUS_CONFIG_ONLY/janus.jcfg -F $JANUS_CONFIG_ONLY)" >&2
    exit 0
fi

if [ "$BUILD" = 1 ]; then
    cargo build --release -j2 -p sfumato -p sfumato-perf
fi
for b in "$SFU_BIN" "$PERF_BIN"; do
    [ -x "$b" ] || { echo "bench.sh: $b missing (build it, or drop --no-build)" >&2; exit 2; }
done

# Free ports, asked from the kernel anew before every server start: other builds and tests on this machine
# start servers on free ports too, so ports chosen once at the top could be taken between scenarios.
# pick_ports: sets HTTP_PORT WEBRTC_PORT RTMP_PORT JANUS_HTTP_PORT JANUS_VIDEO_PORT JANUS_AUDIO_PORT, TARGET.
pick_ports() {
    read -r HTTP_PORT WEBRTC_PORT JANUS_HTTP_PORT JANUS_VIDEO_PORT JANUS_AUDIO_PORT RTMP_PORT < <(python3 -c '
import socket
keep = []
def port(kind):
    s = socket.socket(type=kind); s.bind(("127.0.0.1", 0)); keep.append(s); return s.getsockname()[1]
print(port(socket.SOCK_STREAM), port(socket.SOCK_DGRAM), port(socket.SOCK_STREAM), port(socket.SOCK_DGRAM), port(socket.SOCK_DGRAM),
      port(socket.SOCK_STREAM))')
    TARGET=http://127.0.0.1:$HTTP_PORT
}
pick_ports

# veth_setup: the server's network namespace $VETH_NS, joined to this one by the veth pair $VETH_SRV (inside,
# $VETH_SERVER_IP) / $VETH_HAR (here, $VETH_HARNESS_IP). Over loopback the kernel delivers each datagram into
# the viewer's socket in the sender's context, so the server's CPU figure includes the viewers' receive path;
# here the harness's end runs NAPI in its own thread (GRO on, `threaded`), pinned to the harness CPU, and that
# work leaves the server's account, as on a machine whose viewers are elsewhere. TSO off on the server's end:
# veth only hands UDP to NAPI from a device without TSO. The server's end gets the queueing discipline this
# machine gives a NIC (net.core.default_qdisc; veth's own is none), recorded in VETH_QDISC. Sets VETH_OK=1,
# or VETH_WHY.
veth_setup() {
    local t napi q
    if [ "$(id -u)" != 0 ]; then VETH_WHY="needs root (a network namespace)"; return 0; fi
    for t in ip tc ethtool taskset; do
        command -v "$t" >/dev/null 2>&1 || { VETH_WHY="needs $t (apt-get install iproute2 ethtool util-linux)"; return 0; }
    done
    if ! { ip netns add "$VETH_NS" &&
           ip link add "$VETH_SRV" type veth peer name "$VETH_HAR" &&
           ip link set "$VETH_SRV" netns "$VETH_NS" &&
           ip -n "$VETH_NS" addr add "$VETH_SERVER_IP/30" dev "$VETH_SRV" &&
           ip -n "$VETH_NS" link set lo up &&
           ip -n "$VETH_NS" link set "$VETH_SRV" up &&
           ip addr add "$VETH_HARNESS_IP/30" dev "$VETH_HAR" &&
           ip link set "$VETH_HAR" up &&
           ip netns exec "$VETH_NS" ethtool -K "$VETH_SRV" tso off &&
           ethtool -K "$VETH_HAR" gro on &&
           echo 1 >"/sys/class/net/$VETH_HAR/threaded"; } >"$WORK/veth-setup.log" 2>&1; then
        VETH_WHY="the set-up failed: $(tail -1 "$WORK/veth-setup.log")"
        veth_teardown
        return 0
    fi
    # The NAPI thread's name is "napi/<device>-<id>", cut to 15 characters.
    local prefix="napi/$VETH_HAR-"
    napi=$(ps -eo pid=,comm= | awk -v n="${prefix:0:15}" 'index($2, n) == 1 { p = $1 } END { print p }')
    if [ -z "$napi" ] || ! taskset -pc "$HARNESS_CPU" "$napi" >/dev/null 2>&1; then
        VETH_WHY="no NAPI thread for $VETH_HAR to pin (kernel without threaded NAPI for veth?)"
        veth_teardown
        return 0
    fi
    VETH_QDISC=noqueue
    for q in "$(cat /proc/sys/net/core/default_qdisc 2>/dev/null)" pfifo_fast; do
        if [ -n "$q" ] && ip netns exec "$VETH_NS" tc qdisc replace dev "$VETH_SRV" root "$q" >/dev/null 2>&1; then
            VETH_QDISC=$q
            break
        fi
    done
    # The no-offload rows need the offload to be switchable (and to read back as set).
    if veth_uso off && [ "$(veth_uso_state)" = off ] && veth_uso on && [ "$(veth_uso_state)" = on ]; then
        VETH_NOUSO=1
    else
        veth_uso on || true
        echo "bench.sh: UDP segmentation offload on $VETH_SRV can't be switched: no -nouso rows" >&2
    fi
    [ "$(veth_uso_state)" = on ] || { VETH_WHY="UDP segmentation offload is not on for $VETH_SRV"; veth_teardown; return 0; }
    VETH_OK=1
}

# veth_uso on|off: UDP segmentation offload on the server's end of the pair. On, the server's GSO messages
# cross the pair whole (a NIC with UDP segmentation offload splits them in hardware); off, the kernel splits
# them in the server's context, as for a NIC without it.
veth_uso() {
    ip netns exec "$VETH_NS" ethtool -K "$VETH_SRV" tx-udp-segmentation "$1" >/dev/null 2>&1
}

# veth_uso_state: "on" or "off", as ethtool reads it back.
veth_uso_state() {
    ip netns exec "$VETH_NS" ethtool -k "$VETH_SRV" 2>/dev/null | awk '$1 == "tx-udp-segmentation:" { print $2 }'
}

# veth_fields [true|false]: RUN_SETUP's JSON for a run behind the pair, with the offload state if given.
veth_fields() {
    echo "{\"network\": \"veth\", \"qdisc\": \"$VETH_QDISC\"${1:+, \"udp_segmentation_offload\": $1}}"
}

veth_teardown() {
    ip netns delete "$VETH_NS" 2>/dev/null || true
    ip link delete "$VETH_HAR" 2>/dev/null || true
    VETH_OK=0
}

# start_server NAME [rtmp|allcores|veth]: a fresh server on fresh ports (RTMP ingest on $RTMP_PORT only with
# "rtmp"; "allcores": as deployed, one core per CPU, not pinned by taskset — it shares the harness's CPU;
# "veth": in the namespace $VETH_NS, on $VETH_SERVER_IP); up to 3 tries, in case another program takes a port
# between picking and binding.
start_server() {
    local log=$WORK/sfumato-$1.log try
    for try in 1 2 3; do
        pick_ports
        local rtmp=0 pin=(taskset -c "$SERVER_CPU") cores=(--cores 1) ip=127.0.0.1
        if [ "${2:-}" = rtmp ]; then rtmp=$RTMP_PORT; fi
        if [ "${2:-}" = allcores ]; then pin=(); cores=(); fi
        # `ip netns exec` execs (no fork): $! stays the server's pid.
        if [ "${2:-}" = veth ]; then pin=(ip netns exec "$VETH_NS" "${pin[@]}"); ip=$VETH_SERVER_IP; TARGET=http://$ip:$HTTP_PORT; fi
        "${pin[@]}" "$SFU_BIN" standalone "${cores[@]}" --rtmp-port "$rtmp" \
            --http-addr "$ip" --http-port "$HTTP_PORT" --webrtc-port "$WEBRTC_PORT" --webrtc-ips "$ip" \
            2>"$log" &
        SFU_PID=$!
        for _ in $(seq 1 100); do
            if curl -sf "$TARGET/healthz" >/dev/null 2>&1; then return 0; fi
            if ! kill -0 "$SFU_PID" 2>/dev/null; then break; fi
            sleep 0.1
        done
        stop_server
        echo "bench.sh: the server did not come up (try $try); its log:" >&2
        cat "$log" >&2
    done
    exit 2
}

# start_janus NAME [veth]: Janus on fresh ports, pinned like the server; "veth": in $VETH_NS, on $VETH_SERVER_IP.
# Sets JANUS_IP.
start_janus() {
    local dir=$WORK/janus pin=(taskset -c "$SERVER_CPU")
    JANUS_IP=127.0.0.1
    if [ "${2:-}" = veth ]; then pin=(ip netns exec "$VETH_NS" "${pin[@]}"); JANUS_IP=$VETH_SERVER_IP; fi
    pick_ports
    write_janus_config "$dir" "$JANUS_HTTP_PORT" "$JANUS_VIDEO_PORT" "$JANUS_AUDIO_PORT" "$JANUS_IP"
    "${pin[@]}" janus -C "$dir/janus.jcfg" -F "$dir" >"$WORK/janus-$1.log" 2>&1 &
    SFU_PID=$!
    for _ in $(seq 1 100); do
        if curl -sf "http://$JANUS_IP:$JANUS_HTTP_PORT/janus/info" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$SFU_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "bench.sh: Janus did not come up; its log:" >&2
    tail -20 "$WORK/janus-$1.log" >&2
    return 1
}

stop_server() {
    kill "$SFU_PID" 2>/dev/null || true
    wait "$SFU_PID" 2>/dev/null || true
    SFU_PID=""
}

# start_cluster NAME N: N `sfumato media` nodes (a, b, c) on fresh ports, like scripts/cluster.sh: a in zone
# z1 (the publisher's; the seed), b and c in z2 (not a's zone, so their gateways keep the viewers POSTed to
# them instead of proxying them to a; where the cluster relays one copy per zone pair, c or b is z2's relay
# and the other one is 2 hops from a — the harness reads the hops from each node's subscriptions),
# --cores 1, all pinned to $SERVER_CPU. Waits until every node sees the others alive. Sets CLUSTER_PIDS
# and CLUSTER_TARGETS; up to 3 tries.
stop_cluster() {
    local pid
    for pid in "${CLUSTER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${CLUSTER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    CLUSTER_PIDS=()
}

start_cluster() {
    local name=$1 n=$2 try i ids=(a b c) ports
    for try in 1 2 3; do
        read -r -a ports < <(N=$n python3 -c '
import os, socket
keep = []
def port(kind):
    s = socket.socket(type=kind); s.bind(("127.0.0.1", 0)); keep.append(s); return s.getsockname()[1]
print(*[port(k) for _ in range(int(os.environ["N"])) for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_DGRAM)])')
        CLUSTER_PIDS=()
        CLUSTER_TARGETS=()
        for ((i = 0; i < n; i++)); do
            local args=(media --node-id "${ids[$i]}" --zone "z$((i > 0 ? 2 : 1))" --cores 1 --no-pin --rtmp-port 0
                        --http-addr 127.0.0.1 --http-port "${ports[$((3 * i))]}" --webrtc-port "${ports[$((3 * i + 1))]}"
                        --webrtc-ips 127.0.0.1 --quic-port "${ports[$((3 * i + 2))]}" --advertise-ip 127.0.0.1)
            [ "$i" -gt 0 ] && args+=(--seeds "127.0.0.1:${ports[2]}")
            taskset -c "$SERVER_CPU" "$SFU_BIN" "${args[@]}" >"$WORK/sfumato-$name-${ids[$i]}.log" 2>&1 &
            CLUSTER_PIDS+=($!)
            CLUSTER_TARGETS+=("http://127.0.0.1:${ports[$((3 * i))]}")
        done
        local up=0
        for _ in $(seq 1 150); do
            up=1
            for t in "${CLUSTER_TARGETS[@]}"; do
                local alive
                alive=$(curl -sf "$t/healthz" 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["cluster"]["members_alive"])' 2>/dev/null || echo -1)
                if [ "$alive" != $((n - 1)) ]; then up=0; break; fi
            done
            [ "$up" = 1 ] && return 0
            for pid in "${CLUSTER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || break 2; done
            sleep 0.1
        done
        stop_cluster
        echo "bench.sh: the $n-node cluster did not come up (try $try); node a's log:" >&2
        tail -20 "$WORK/sfumato-$name-a.log" >&2
    done
    return 1
}

RUNS=()
# run NAME SERVER(0 none, 1 sfumato, rtmp = sfumato with RTMP ingest, allcores = sfumato on every core, janus,
# clusterN = N `sfumato media` nodes) SUBCOMMAND ARGS...: runs one
# scenario; exit 1 (some viewers missing, or a sweep with no good count) is kept, exit 2 (setup error)
# drops the scenario from the table.
run() {
    local name=$1 server=$2
    shift 2
    echo "== $name" >&2
    local extra=()
    if [ "$server" = 1 ] || [ "$server" = allcores ] || [ "$server" = veth ]; then
        start_server "$name" "$server"
        extra=(--target "$TARGET" --server-pid "$SFU_PID")
    elif [ "$server" = rtmp ]; then
        start_server "$name" rtmp
        extra=(--target "$TARGET" --server-pid "$SFU_PID" --rtmp-url "rtmp://127.0.0.1:$RTMP_PORT/live")
    elif [ "$server" = janus ] || [ "$server" = janus-veth ]; then
        start_janus "$name" "${server#janus-}" || return 0
        extra=(--target-kind janus --target "http://$JANUS_IP:$JANUS_HTTP_PORT/janus" --server-pid "$SFU_PID"
               --janus-video-rtp "$JANUS_IP:$JANUS_VIDEO_PORT" --janus-audio-rtp "$JANUS_IP:$JANUS_AUDIO_PORT")
    elif [ "${server#cluster}" != "$server" ]; then
        start_cluster "$name" "${server#cluster}" || return 0
        extra=(--target-a "${CLUSTER_TARGETS[0]}" --target-b "${CLUSTER_TARGETS[1]}")
        [ ${#CLUSTER_TARGETS[@]} -gt 2 ] && extra+=(--target-c "${CLUSTER_TARGETS[2]}")
        extra+=(--server-pids "$(IFS=,; echo "${CLUSTER_PIDS[*]}")")
    fi
    local rc=0
    taskset -c "$HARNESS_CPU" "$PERF_BIN" "$@" "${extra[@]}" --quiet --json "$WORK/$name.json" >"$WORK/$name.txt" 2>"$WORK/$name.err" || rc=$?
    if [ "${server#cluster}" != "$server" ]; then stop_cluster; elif [ "$server" != 0 ]; then stop_server; fi
    cat "$WORK/$name.txt" >&2
    if [ "$rc" -ge 2 ] || [ ! -s "$WORK/$name.json" ]; then
        echo "bench.sh: $name failed (exit $rc):" >&2
        tail -5 "$WORK/$name.err" >&2
        return 0
    fi
    if [ "$rc" = 1 ]; then echo "bench.sh: $name: not every viewer connected, or failures (kept in the table)" >&2; fi
    if [ -n "$RUN_SETUP" ]; then
        python3 - "$WORK/$name.json" "$RUN_SETUP" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
doc.update(json.loads(sys.argv[2]))
json.dump(doc, open(sys.argv[1], "w"))
PYEOF
    fi
    RUNS+=("$name=$WORK/$name.json")
}

# run_median N NAME SERVER SUBCOMMAND ARGS...: `run` N times (NAME.1 .. NAME.N) and keep, as NAME, the run
# with the median server CPU per packet: on a shared VM one window can be 20-30 % off (neighbours), and the
# figures the README quotes should not hang on one of them. The other runs' figures stay in $WORK.
run_median() {
    local n=$1 name=$2 i
    shift 2
    for i in $(seq 1 "$n"); do
        run "$name.$i" "$@"
    done
    keep_median "$name"
}

# keep_median NAME: replaces the results NAME.1, NAME.2, ... in RUNS by one, NAME: the median by server CPU
# per packet (the runs may have been interleaved with others').
keep_median() {
    local name=$1 r files=() rest=()
    for r in "${RUNS[@]}"; do
        if [[ "${r%%=*}" =~ ^"$name"\.[0-9]+$ ]]; then files+=("${r#*=}"); else rest+=("$r"); fi
    done
    [ ${#files[@]} -gt 0 ] || return 0
    RUNS=("${rest[@]}")
    python3 - "$WORK/$name.json" "${files[@]}" <<'PYEOF' >&2
import json, sys
out, files = sys.argv[1], sys.argv[2:]
runs = sorted((json.load(open(f)).get("server_cpu_ns_per_packet") or 0.0, f) for f in files)
ns, pick = runs[(len(runs) - 1) // 2]
doc = json.load(open(pick))
doc["repeats"] = {"runs": len(runs), "server_cpu_ns_per_packet": [round(r[0]) for r in runs], "kept": pick.rsplit("/", 1)[-1]}
json.dump(doc, open(out, "w"))
print(f"bench.sh: kept the median of {len(runs)} runs by server ns/pkt: {[round(r[0]) for r in runs]}")
PYEOF
    RUNS+=("$name=$WORK/$name.json")
}
REPEAT=${BENCH_REPEAT:-3}
[ "$QUICK" = 1 ] && REPEAT=${BENCH_REPEAT:-1}

# The sweeps: 3 s windows per viewer count, stop at the first count with loss > 1 % or a saturated harness.
SWEEP=(sweep --start "$SWEEP_START" --step "$SWEEP_STEP" --max "$SWEEP_MAX" --duration 3s --warmup 1s --bitrate 1000k --fps 30)

started=$(date +%s)
run floor-50       0 floor --viewers 50  --duration "$DURATION" --reflector-cpu "$SERVER_CPU"
[ "$QUICK" = 1 ] || run floor-50-gso   0 floor --viewers 50  --duration "$DURATION" --reflector-cpu "$SERVER_CPU" --gso
# The same with viewers that take GSO messages whole (UDP_GRO): how much of the per-packet figure is the
# viewers' kernel receive path, which loopback runs on the sender's CPU (perf/src/gro.rs).
[ "$QUICK" = 1 ] || run floor-50-gso-gro 0 floor --viewers 50 --duration "$DURATION" --reflector-cpu "$SERVER_CPU" --gso --receiver-gro
run floor-200      0 floor --viewers 200 --duration "$DURATION" --reflector-cpu "$SERVER_CPU"
# One viewer: the CPU that does not grow with the audience (the report's cost model, fanout-1 → fanout-50),
# and fanout-50 with the server behind a veth pair (veth_setup: its CPU without the viewers' kernel receive
# path), with and without UDP segmentation offload on its end: all interleaved with fanout-50's windows, so
# that the VM's drift between windows lands in all of them alike.
veth_setup
[ "$VETH_OK" = 1 ] || echo "bench.sh: no veth runs: $VETH_WHY" >&2
FAN50=(fanout --room bench --viewers 50 --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s)
for i in $(seq 1 "$REPEAT"); do
    run "fanout-1.$i"  1 fanout --room bench --viewers 1  --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
    run "fanout-50.$i" 1 "${FAN50[@]}"
    if [ "$VETH_OK" = 1 ]; then
        RUN_SETUP=$(veth_fields true)
        run "fanout-50-veth.$i" veth "${FAN50[@]}"
        if [ "$VETH_NOUSO" = 1 ] && veth_uso off; then
            RUN_SETUP=$(veth_fields false)
            run "fanout-50-veth-nouso.$i" veth "${FAN50[@]}"
            veth_uso on || { VETH_WHY="UDP segmentation offload did not switch back on"; veth_teardown; }
        fi
        RUN_SETUP=""
    fi
done
keep_median fanout-1
keep_median fanout-50
keep_median fanout-50-veth
keep_median fanout-50-veth-nouso
[ "$QUICK" = 1 ] || run_median "$REPEAT" fanout-50-gro 1 "${FAN50[@]}" --receiver-gro
run_median "$REPEAT" fanout-200 1 fanout --room bench --viewers 200 --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
# The server as deployed (every core; viewers spread over them): its own added latency, CPU shared with the harness.
run_median "$REPEAT" fanout-50-allcores allcores "${FAN50[@]}"
if [ "$QUICK" != 1 ]; then
    run rooms-10x4     1 rooms --rooms 10 --publishers 1 --viewers 4 --bitrate 500k --duration "$DURATION" --warmup 2s
    run churn-10ps     1 churn --rate 10/s --duration 15s --lifetime 3s
fi
if command -v ffmpeg >/dev/null 2>&1; then
    run rtmp-20    rtmp rtmp --room bench-rtmp --viewers 20 --duration "$DURATION" --warmup 2s
else
    echo "bench.sh: ffmpeg not installed (apt-get install ffmpeg): no rtmp run" >&2
fi
if [ "$QUICK" = 1 ]; then
    run cascade-2x25   cluster2 cascade --room bench-cascade --viewers 25 --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
else
    run cascade-3x25   cluster3 cascade --room bench-cascade --viewers 25 --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
fi
run sweep-sfumato  1 "${SWEEP[@]}"
PAIRS=()
if [ "$JANUS" = 1 ] && command -v janus >/dev/null 2>&1; then
    run_median "$REPEAT" janus-fanout-50  janus fanout --viewers 50  --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
    run_median "$REPEAT" janus-fanout-200 janus fanout --viewers 200 --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
    run sweep-janus      janus "${SWEEP[@]}"
    PAIRS=(--pair fanout-50:janus-fanout-50 --pair fanout-200:janus-fanout-200 --pair sweep-sfumato:sweep-janus)
    if [ "$VETH_OK" = 1 ]; then
        # Janus sends one datagram per sendmsg (no GSO): the offload setting does not matter to it.
        RUN_SETUP=$(veth_fields)
        run_median "$REPEAT" janus-fanout-50-veth janus-veth fanout --viewers 50 --bitrate 1000k --fps 30 --duration "$DURATION" --warmup 2s
        RUN_SETUP=""
        PAIRS+=(--pair fanout-50-veth:janus-fanout-50-veth)
    fi
elif [ "$JANUS" = 1 ]; then
    echo "bench.sh: janus not installed (apt-get install janus): no side-by-side" >&2
fi
echo "bench.sh: scenarios took $(( $(date +%s) - started )) s" >&2

[ ${#RUNS[@]} -gt 0 ] || { echo "bench.sh: no scenario produced a result" >&2; exit 2; }
mkdir -p "$RESULTS"
"$PERF_BIN" report --date "$DATE" \
    --meta "machine=$(nproc) CPUs, $(uname -sr), loopback$([ "$VETH_OK" = 1 ] && echo "; *-veth: server in a network namespace behind a veth pair")" \
    --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo -dirty)" \
    --meta "pinning=server CPU $SERVER_CPU (--cores 1), harness CPU $HARNESS_CPU; *-allcores: server on every CPU, unpinned" \
    --meta "duration=$DURATION" \
    --cost-model fanout-1:fanout-50 --cost-model fanout-1:fanout-200 \
    --out "$OUT_JSON" --md "$OUT_MD" "${PAIRS[@]}" "${RUNS[@]}"

# Charts next to the results (a failure here leaves the results in place).
"$PERF_BIN" plot "$OUT_JSON" --out-prefix "$RESULTS/$STAMP-" || echo "bench.sh: plotting failed (results are written)" >&2

if [ "$DO_COMPARE" = 1 ]; then
    if [ -z "$COMPARE" ]; then
        # The newest results file older than this one (names sort by date, then run number: 2026-12-06.9 before .10).
        COMPARE=$(ls "$RESULTS"/*-bench.json 2>/dev/null | grep -vxF "$OUT_JSON" | sort -V | tail -1 || true)
    fi
    if [ -z "$COMPARE" ]; then
        echo "bench.sh: --compare: no earlier results file in $RESULTS" >&2
    else
        { echo; "$PERF_BIN" compare "$COMPARE" "$OUT_JSON"; } | tee -a "$OUT_MD"
    fi
fi
echo "bench.sh: wrote $OUT_JSON, $OUT_MD and $RESULTS/$STAMP-*.png (scenario logs in $WORK)" >&2
