//! Smoke runs of the `fanout`, `rooms`, `churn` and `cascade` scenarios against a real server (a few viewers,
//! ~2 s each; `cascade` starts two `sfumato media` nodes).
//!
//! The server binary is `target/release/sfumato` of this workspace (another package, so Cargo doesn't
//! build it for this test): build it first with `cargo build --release -p sfumato`, or point
//! `SFUMATO_BIN` at one. Without it the tests print why and pass. The floor scenario needs no server: its
//! smoke test is `floor::tests::floor_smoke`.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sfumato_perf::cascade::{self, CascadeConfig};
use sfumato_perf::churn::{self, ChurnConfig};
use sfumato_perf::client::{next_stream_id, PublisherConfig};
use sfumato_perf::fanout::{self, FanoutConfig};
use sfumato_perf::http_client::HttpClient;
use sfumato_perf::rooms::{self, RoomsConfig};

fn server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SFUMATO_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sfumato");
    p.exists().then_some(p)
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Option<Server> {
    let Some(bin) = server_bin() else {
        eprintln!("skipped: no target/release/sfumato (cargo build --release -p sfumato, or set SFUMATO_BIN)");
        return None;
    };
    let http = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free TCP port").port();
    let udp = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port();
    let child = Command::new(bin)
        .args(["standalone", "--cores", "1", "--rtmp-port", "0", "--http-addr", "127.0.0.1"])
        .args(["--http-port", &http.to_string(), "--webrtc-port", &udp.to_string(), "--webrtc-ips", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let base = format!("http://127.0.0.1:{http}");
    let s = Server { child, base };
    let http = HttpClient::new(&s.base, Duration::from_secs(1)).expect("url");
    let end = Instant::now() + Duration::from_secs(10);
    while http.get("/healthz").is_err() {
        assert!(Instant::now() < end, "the server did not answer /healthz within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(s)
}

/// The same fan-out with viewers reading datagram by datagram and with `--receiver-gro` (the server's GSO
/// messages taken whole and split by the harness): every packet arrives either way.
#[test]
fn fanout_smoke_with_and_without_receiver_gro() {
    let Some(srv) = start_server() else { return };
    for receiver_gro in [false, true] {
        let cfg = FanoutConfig {
            target: srv.base.clone(),
            room: format!("smoke-gro-{receiver_gro}"),
            viewers: 4,
            publisher: PublisherConfig { bitrate_bps: 1_000_000, stream_id: next_stream_id(), ..PublisherConfig::default() },
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            threads: 1,
            ramp_per_s: None,
            connect_timeout: Duration::from_secs(10),
            server_pid: Some(srv.child.id()),
            progress: false,
            receiver_gro,
        };
        let r = fanout::run(&cfg).expect("fanout run").result;
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["receiver_gro"], receiver_gro);
        assert_eq!(r.viewers_connected, 4, "gro {receiver_gro}");
        assert!(r.packets_sent >= 200, "gro {receiver_gro}: ~170 packets/s, sent {}", r.packets_sent);
        assert!(r.loss_ratio < 0.01, "gro {receiver_gro}: loss {}", r.loss_ratio);
        assert_eq!(r.duplicates, 0, "gro {receiver_gro}");
        assert!(r.server_cpu_ns_per_packet.is_some());
        assert!(fanout::summary(&r).contains("UDP_GRO") == receiver_gro);
    }
}

#[test]
fn rooms_smoke_reports_refused_publishers() {
    let Some(srv) = start_server() else { return };
    let cfg = RoomsConfig {
        target: srv.base.clone(),
        room_prefix: "smoke".into(),
        rooms: 2,
        publishers_per_room: 2,
        viewers_per_room: 2,
        publisher: PublisherConfig { bitrate_bps: 300_000, stream_id: next_stream_id(), ..PublisherConfig::default() },
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        threads: 1,
        connect_timeout: Duration::from_secs(10),
        server_pid: Some(srv.child.id()),
        progress: false,
    };
    let r = rooms::run(&cfg).expect("rooms run");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!((v["scenario"].as_str(), v["target"].as_str()), (Some("rooms"), Some(srv.base.as_str())));
    assert_eq!(r.viewers_connected, 4);
    assert!(r.loss_ratio < 0.01, "loss {}", r.loss_ratio);
    assert_eq!(v["publishers_accepted"], 2, "one publisher per room today");
    assert_eq!(v["publishers_refused"]["409"], 2);
    assert!(r.server_cpu_ns_per_packet.is_some() && r.server_rss_bytes_per_viewer.is_some());
}

#[test]
fn churn_smoke_has_no_leak() {
    let Some(srv) = start_server() else { return };
    let cfg = ChurnConfig {
        target: srv.base.clone(),
        room: "smoke-churn".into(),
        rate_per_s: 5.0,
        duration: Duration::from_secs(2),
        lifetime: Duration::from_millis(1500),
        publisher: PublisherConfig { bitrate_bps: 300_000, gop: 15, stream_id: next_stream_id(), ..PublisherConfig::default() },
        threads: 1,
        connect_timeout: Duration::from_secs(10),
        settle_timeout: Duration::from_secs(5),
        server_pid: Some(srv.child.id()),
        progress: false,
    };
    let r = churn::run(&cfg).expect("churn run");
    assert_eq!(r.scenario, "churn");
    assert_eq!(r.viewers_attempted, 10);
    assert_eq!(r.viewers_joined, 10, "{:?}", r.errors);
    assert_eq!((r.post_failures, r.no_video_failures, r.delete_failures), (0, 0, 0));
    assert_eq!(r.sessions_before, Some(0));
    assert!(r.sessions_peak.unwrap_or(0) >= 2);
    assert_eq!(r.sessions_leaked, Some(0));
    assert!(r.join_ms.is_some_and(|j| j.max < 1500.0));
    assert!(r.server_rss_bytes_before.is_some() && r.server_rss_bytes_after.is_some());
}

/// Two `sfumato media` nodes (a: zone z1, the seed; b: zone z2), --cores 1 each, on free ports.
fn start_cluster() -> Option<Vec<Server>> {
    let Some(bin) = server_bin() else {
        eprintln!("skipped: no target/release/sfumato (cargo build --release -p sfumato, or set SFUMATO_BIN)");
        return None;
    };
    let tcp = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free TCP port").port();
    let udp = || UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port();
    let seed = udp();
    let mut nodes = Vec::new();
    for (i, (id, zone)) in [("a", "z1"), ("b", "z2")].into_iter().enumerate() {
        let http = tcp();
        let quic = if i == 0 { seed } else { udp() };
        let mut cmd = Command::new(&bin);
        cmd.args(["media", "--node-id", id, "--zone", zone, "--cores", "1", "--no-pin", "--rtmp-port", "0"])
            .args(["--http-addr", "127.0.0.1", "--http-port", &http.to_string(), "--webrtc-port", &udp().to_string()])
            .args(["--webrtc-ips", "127.0.0.1", "--quic-port", &quic.to_string(), "--advertise-ip", "127.0.0.1"]);
        if i > 0 {
            cmd.args(["--seeds", &format!("127.0.0.1:{seed}")]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start a node");
        nodes.push(Server { child, base: format!("http://127.0.0.1:{http}") });
    }
    let end = Instant::now() + Duration::from_secs(15);
    for n in &nodes {
        let http = HttpClient::new(&n.base, Duration::from_secs(1)).expect("url");
        while !http.get_json("/healthz").is_ok_and(|v| v["cluster"]["members_alive"] == 1) {
            assert!(Instant::now() < end, "{} did not see the other node within 15 s", n.base);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Some(nodes)
}

#[test]
fn cascade_smoke_one_copy_per_node() {
    let Some(nodes) = start_cluster() else { return };
    let cfg = CascadeConfig {
        targets: nodes.iter().map(|n| n.base.clone()).collect(),
        server_pids: nodes.iter().map(|n| n.child.id()).collect(),
        room: "smoke-cascade".into(),
        viewers: 2,
        viewers_a: 2,
        publisher: PublisherConfig { bitrate_bps: 300_000, stream_id: next_stream_id(), ..PublisherConfig::default() },
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(10),
        threads: 1,
        progress: false,
    };
    let r = cascade::run(&cfg).expect("cascade run");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["scenario"], "cascade");
    assert_eq!(r.viewers_connected, 4);
    assert!(r.loss_ratio < 0.01, "loss {}", r.loss_ratio);
    assert_eq!(v["viewers_misplaced"], 0, "each gateway keeps its viewers");
    assert_eq!(v["groups"][0]["viewers_connected"], 2);
    assert_eq!(v["groups"][1]["viewers_connected"], 2);
    assert!(v["groups"][1]["latency_us"]["count"].as_u64().unwrap() > 0);
    assert!(v["hop_added_latency_us"]["p50"].is_i64());
    // One copy per packet to the one subscribing node (± packets at the window's edges).
    let copies = v["link"]["copies_per_packet"].as_f64().unwrap();
    assert!((0.9..1.1).contains(&copies), "copies per packet {copies}");
    assert_eq!(v["nodes"][1]["hops"], 1);
    assert!(v["nodes"][0]["cpu_percent"].is_f64() && v["nodes"][1]["cpu_percent"].is_f64());
}
