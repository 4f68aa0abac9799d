//! Smoke runs of the `rooms` and `churn` scenarios against a real server (a few viewers, ~2 s each).
//!
//! The server binary is `target/release/sfumato` of this workspace (another package, so Cargo doesn't
//! build it for this test): build it first with `cargo build --release -p sfumato`, or point
//! `SFUMATO_BIN` at one. Without it the tests print why and pass. The floor scenario needs no server: its
//! smoke test is `floor::tests::floor_smoke`.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sfumato_perf::churn::{self, ChurnConfig};
use sfumato_perf::client::{next_stream_id, PublisherConfig};
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
