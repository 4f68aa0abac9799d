//! End-to-end tests of the real `sfumato` binary through real sockets: str0m publishers and viewers
//! (from the `sfumato-perf` crate) speak WHIP/WHEP over HTTP and ICE/DTLS/SRTP over UDP.
//!
//! Each test starts its own server (`--cores 2 --webrtc-ips 127.0.0.1`) on free ports. The 50-viewer
//! test takes a write lock so it never shares the machine's two cores with the other tests; the others
//! take read locks and run in parallel with each other.

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sfumato_perf::client::{next_stream_id, PublisherConfig};
use sfumato_perf::http_client::HttpClient;
use sfumato_perf::{Harness, Kind, MeasureWindow, Session};
use str0m::rtp::VideoOrientation;

const CORES: usize = 2;

/// Heavy tests take `write`, light ones `read`.
static MACHINE: RwLock<()> = RwLock::new(());

/// Next port to try; every test of this process takes its own range.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
static PORT_PICK: Mutex<()> = Mutex::new(());

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}
fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

/// (http port, first webrtc port) with `http`, `webrtc..webrtc+CORES` all free right now.
fn free_ports() -> (u16, u16) {
    let _g = PORT_PICK.lock().unwrap_or_else(|e| e.into_inner());
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        // Spread concurrent test processes apart.
        NEXT_PORT.store(20_000 + (std::process::id() % 1000) as u16 * 20, Ordering::Relaxed);
    }
    loop {
        let base = NEXT_PORT.fetch_add(1 + CORES as u16, Ordering::Relaxed);
        if base > 60_000 {
            NEXT_PORT.store(20_000, Ordering::Relaxed);
            continue;
        }
        if tcp_free(base) && (1..=CORES as u16).all(|i| udp_free(base + i)) {
            return (base, base + 1);
        }
    }
}

/// A running server; killed on drop, its log printed if the test is failing.
struct Server {
    child: Child,
    log: PathBuf,
    base: String,
    http: HttpClient,
}

impl Server {
    fn start(name: &str) -> Server {
        Self::start_with(name, &[])
    }

    fn start_with(name: &str, extra: &[&str]) -> Server {
        let (http_port, webrtc_port) = free_ports();
        let log = std::env::temp_dir().join(format!("sfumato-test-{name}-{}-{http_port}.log", std::process::id()));
        let out = File::create(&log).expect("create server log");
        let err = out.try_clone().expect("clone log fd");
        let child = Command::new(env!("CARGO_BIN_EXE_sfumato"))
            .args(["standalone", "--http-port", &http_port.to_string(), "--webrtc-port", &webrtc_port.to_string()])
            .args(["--cores", &CORES.to_string(), "--webrtc-ips", "127.0.0.1", "--http-addr", "127.0.0.1"])
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            // The send path is chosen by each test's arguments, not by the environment.
            .env_remove("SFUMATO_STR0M_SEND")
            .env_remove("SFUMATO_VIEWER_BWE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn sfumato");
        let base = format!("http://127.0.0.1:{http_port}");
        let http = HttpClient::new(&base, Duration::from_secs(5)).expect("http client");
        let mut s = Server { child, log, base, http };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("sfumato exited during startup: {status}\n{}", s.log_tail());
            }
            if s.http.get("/healthz").is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "/healthz did not answer within 15 s\n{}", s.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn healthz(&self) -> serde_json::Value {
        self.http.get_json("/healthz").expect("GET /healthz")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(80);
        format!("--- server log {} (last {} lines) ---\n{}", self.log.display(), lines.len() - from, lines[from..].join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first so the server can shut down; then make sure.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn publisher_cfg() -> PublisherConfig {
    PublisherConfig { bitrate_bps: 1_000_000, fps: 30, gop: 60, stream_id: next_stream_id(), ..PublisherConfig::default() }
}

fn wait(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    if let Err(e) = Harness::wait_for(timeout, what, cond) {
        panic!("{e}");
    }
}

fn video_stream(v: &Session) -> Option<u32> {
    v.peer.stats().kinds[Kind::Video.index()].stream_id
}

fn per_core(h: &serde_json::Value, field: &str) -> Vec<u64> {
    h["per_core"].as_array().expect("per_core array").iter().map(|c| c[field].as_u64().unwrap_or(0)).collect()
}

/// `--viewer-bwe`: str0m estimates each viewer's bandwidth from its transport-wide feedback; the room's
/// lowest estimate (over both cores) reaches the str0m publisher as REMB.
#[test]
fn viewer_bandwidth_estimates_reach_the_publisher_as_remb() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start_with("remb", &["--viewer-bwe"]);
    let h = Harness::new(&srv.base, 2).expect("harness");
    let publisher = h.publish("remb", publisher_cfg()).expect("publish");
    wait(Duration::from_secs(5), "publisher connected", || publisher.peer.connected());
    let viewers: Vec<Session> = (0..4).map(|i| h.view("remb").unwrap_or_else(|e| panic!("viewer {i}: {e}"))).collect();
    wait(Duration::from_secs(10), "viewers to get video", || viewers.iter().all(|v| v.peer.first_video().is_some()));
    wait(Duration::from_secs(10), "a REMB at the publisher", || {
        publisher.peer.remb_received.load(Ordering::Relaxed) > 0
    });
    let hz = srv.healthz();
    let hints = hz["stats"]["bitrate_hints_sent"].as_u64().unwrap_or(0);
    let bps = publisher.peer.last_remb_bps.load(Ordering::Relaxed);
    eprintln!("remb: bitrate_hints_sent {hints}, publisher saw {} REMB, last {bps} bit/s", publisher.peer.remb_received.load(Ordering::Relaxed));
    assert!(hints > 0, "healthz: {hz}");
    assert!(bps > 100_000, "REMB of {bps} bit/s");
    // At most one REMB per second for the room.
    let before = srv.healthz()["stats"]["bitrate_hints_sent"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(3));
    let after = srv.healthz()["stats"]["bitrate_hints_sent"].as_u64().unwrap_or(0);
    assert!(after - before <= 4, "{} REMBs in 3 s", after - before);
    for v in &viewers {
        h.delete(v).expect("DELETE viewer");
    }
    h.delete(&publisher).expect("DELETE publisher");
}

#[test]
fn fifty_viewers_over_two_cores_receive_every_packet() {
    let _machine = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("fifty");
    // Thread 0 runs the publisher alone, thread 1 the 50 viewers.
    let h = Harness::new(&srv.base, 2).expect("harness");
    let publisher = h.publish("fifty", publisher_cfg()).expect("publish");
    wait(Duration::from_secs(5), "publisher connected", || publisher.peer.connected());

    let viewers: Vec<Session> = (0..50).map(|i| h.view("fifty").unwrap_or_else(|e| panic!("viewer {i}: {e}"))).collect();
    wait(Duration::from_secs(10), "all 50 viewers to get video", || viewers.iter().all(|v| v.peer.first_video().is_some()));

    let hz = srv.healthz();
    assert_eq!(hz["viewers"].as_u64(), Some(50), "healthz: {hz}");
    let viewers_per_core = per_core(&hz, "viewers");
    assert_eq!(viewers_per_core.len(), CORES);
    assert!(viewers_per_core.iter().all(|&n| n > 0), "viewers on every core: {viewers_per_core:?}");

    let mut window = MeasureWindow::open(&publisher, &viewers);
    std::thread::sleep(Duration::from_secs(3));
    window.close(&publisher, &viewers);
    std::thread::sleep(Duration::from_millis(300)); // in-flight packets of the window

    let (sent_v, sent_a) = (window.sent(Kind::Video), window.sent(Kind::Audio));
    assert!(sent_v >= 250 && sent_a >= 120, "publisher sent {sent_v} video / {sent_a} audio packets in 3 s");
    let mut bad = Vec::new();
    for (i, v) in viewers.iter().enumerate() {
        for kind in [Kind::Video, Kind::Audio] {
            let (got, expected) = window.viewer(v, kind);
            if (got as f64) < 0.99 * expected as f64 {
                bad.push(format!("viewer {i} {kind:?}: {got}/{expected}"));
            }
        }
        assert!(!v.peer.dead(), "viewer {i} died: {:?}", v.peer.error());
    }
    let worst_v = viewers.iter().map(|v| window.viewer(v, Kind::Video).0).min().unwrap_or(0);
    let worst_a = viewers.iter().map(|v| window.viewer(v, Kind::Audio).0).min().unwrap_or(0);
    let lat = sfumato_perf::stats::LatencySummary::of(&sfumato_perf::stats::merge(
        viewers.iter().map(|v| v.peer.stats().latency_us.clone()).collect::<Vec<_>>().iter(),
    ));
    eprintln!(
        "fifty: window sent {sent_v} video + {sent_a} audio; worst viewer got {worst_v} video / {worst_a} audio; viewers per core {viewers_per_core:?}; latency {lat:?}"
    );
    assert!(bad.is_empty(), "viewers under 99% delivery: {bad:?}");

    let hz = srv.healthz();
    let fwd = per_core(&hz, "rtp_packets_forwarded");
    assert!(fwd.iter().all(|&n| n > 0), "rtp_packets_forwarded per core: {fwd:?}");
    let drops = hz["stats"]["ring_full_drops"].as_u64().unwrap_or(0);
    assert_eq!(drops, 0, "ring_full_drops: {hz}");

    for v in &viewers {
        h.delete(v).expect("DELETE viewer");
    }
    h.delete(&publisher).expect("DELETE publisher");
}

#[test]
fn viewer_before_publisher_starts_receiving() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("early");
    let h = Harness::new(&srv.base, 1).expect("harness");
    let viewers: Vec<Session> = (0..3).map(|_| h.view("early").expect("WHEP into an empty room")).collect();
    wait(Duration::from_secs(5), "viewers connected", || viewers.iter().all(|v| v.peer.connected()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(viewers.iter().all(|v| v.peer.first_video().is_none()), "video before any publisher?");

    let publisher = h.publish("early", publisher_cfg()).expect("publish");
    wait(Duration::from_secs(2), "viewers to get video within 2 s of the publisher's POST", || {
        viewers.iter().all(|v| v.peer.first_video().is_some())
    });
    for (i, v) in viewers.iter().enumerate() {
        let after = v.peer.first_video().unwrap().saturating_duration_since(publisher.post_started);
        eprintln!("early: viewer {i} got video {after:?} after the publisher's POST");
        assert!(after < Duration::from_secs(2), "viewer {i}: first video {after:?} after publish");
        assert_eq!(video_stream(v), publisher.stream_id);
    }
    // And it keeps flowing.
    let before: Vec<u64> = viewers.iter().map(|v| v.peer.stats().kinds[0].packets).collect();
    std::thread::sleep(Duration::from_millis(500));
    for (v, b) in viewers.iter().zip(before) {
        assert!(v.peer.stats().kinds[0].packets > b + 20, "video stalled");
    }
}

#[test]
fn publisher_header_extensions_reach_viewers() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("ext");
    let h = Harness::new(&srv.base, 1).expect("harness");
    // A phone in portrait sends unrotated frames and the rotation in urn:3gpp:video-orientation; audio
    // carries its level (RFC 6464). Both must reach the viewer as the publisher wrote them.
    let cfg = PublisherConfig {
        video_orientation: Some(VideoOrientation::Deg90),
        audio_level: Some(-42),
        ..publisher_cfg()
    };
    let publisher = h.publish("ext", cfg).expect("publish");
    let viewers: Vec<Session> = (0..2).map(|_| h.view("ext").expect("view")).collect();
    wait(Duration::from_secs(10), "viewers to get video and audio levels", || {
        viewers.iter().all(|v| {
            let st = v.peer.stats();
            st.ext.video_orientation_packets > 30 && st.ext.audio_level_packets > 30
        })
    });
    for (i, v) in viewers.iter().enumerate() {
        let st = v.peer.stats();
        eprintln!("ext: viewer {i} {:?}", st.ext);
        assert_eq!(st.ext.video_orientation, Some(VideoOrientation::Deg90), "viewer {i}");
        assert_eq!((st.ext.audio_level, st.ext.voice_activity), (Some(-42), Some(true)), "viewer {i}");
    }
    drop(publisher);
}

/// A viewer hears sender reports (for lip sync and its RTT) about the streams it receives, and about
/// nothing else: str0m's reports for its own send streams, whose SSRCs the direct send path renamed out of
/// the answer, are not sent (they cost a datagram each and name SSRCs the viewer never sees).
#[test]
fn viewers_get_sender_reports_only_for_their_streams() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("sr");
    let h = Harness::new(&srv.base, 1).expect("harness");
    let publisher = h.publish("sr", publisher_cfg()).expect("publish");
    let viewers: Vec<Session> = (0..2).map(|_| h.view("sr").expect("view")).collect();
    // Sender reports go out once a second per stream: wait for two rounds of both streams.
    wait(Duration::from_secs(15), "viewers to get audio, video and sender reports", || {
        viewers.iter().all(|v| {
            let st = v.peer.stats();
            st.rtp_ssrcs.len() >= 2 && st.rtp_ssrcs.iter().all(|s| st.rtcp_senders.iter().any(|(r, n)| r == s && *n >= 2))
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    for (i, v) in viewers.iter().enumerate() {
        let st = v.peer.stats();
        eprintln!("sr: viewer {i} rtp from {:x?}, rtcp from {:x?}", st.rtp_ssrcs, st.rtcp_senders);
        let strangers: Vec<_> = st.rtcp_senders.iter().filter(|(s, _)| !st.rtp_ssrcs.contains(s)).collect();
        assert!(strangers.is_empty(), "viewer {i} got RTCP from SSRCs it receives no media from: {strangers:x?}");
    }
    drop(publisher);
}

#[test]
fn republish_is_picked_up_by_existing_viewers() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("republish");
    let h = Harness::new(&srv.base, 1).expect("harness");
    let a = h.publish("re", publisher_cfg()).expect("publish A");
    let viewers: Vec<Session> = (0..3).map(|_| h.view("re").expect("view")).collect();
    wait(Duration::from_secs(5), "viewers to get A's video", || viewers.iter().all(|v| v.peer.first_video().is_some()));
    std::thread::sleep(Duration::from_millis(500));
    for v in &viewers {
        assert_eq!(video_stream(v), a.stream_id);
    }

    h.delete(&a).expect("DELETE A");
    std::thread::sleep(Duration::from_millis(200));
    let b = h.publish("re", publisher_cfg()).expect("publish B into the same room");
    let b_id = b.stream_id;
    wait(Duration::from_secs(2), "existing viewers to get B's video and audio within 2 s", || {
        viewers.iter().all(|v| {
            let st = v.peer.stats();
            st.kinds.iter().all(|k| k.stream_id == b_id && k.tracker.unique > 0)
        })
    });
    std::thread::sleep(Duration::from_millis(500));

    for (i, v) in viewers.iter().enumerate() {
        assert!(!v.peer.dead(), "viewer {i} session died: {:?}", v.peer.error());
        let st = v.peer.stats();
        for kind in [Kind::Video, Kind::Audio] {
            let k = &st.kinds[kind.index()];
            assert!(k.tracker.unique > 10, "viewer {i} {kind:?}: only {} packets of B", k.tracker.unique);
            let sw: Vec<_> = st.switches.iter().filter(|s| s.kind == kind).collect();
            assert_eq!(sw.len(), 1, "viewer {i} {kind:?}: one switch A→B expected, got {sw:?}");
            let s = sw[0];
            eprintln!("republish: viewer {i} {kind:?} {s:?} seq step {} ts step {}", s.seq_step(), s.ts_step());
            assert_eq!((Some(s.from_stream), Some(s.to_stream)), (a.stream_id, b_id));
            assert!(
                (1..=300).contains(&s.seq_step()),
                "viewer {i} {kind:?}: RTP seq jumped by {} across the re-publish ({s:?})",
                s.seq_step()
            );
            assert!(s.ts_step() > 0, "viewer {i} {kind:?}: RTP timestamp did not advance across the re-publish ({s:?})");
            assert!(k.rtp.max_seq_jump <= 300, "viewer {i} {kind:?}: max seq jump {}", k.rtp.max_seq_jump);
            assert_eq!(k.rtp.ts_backwards, 0, "viewer {i} {kind:?}: timestamps went backwards");
        }
    }
}

#[test]
fn second_publisher_is_refused_with_409() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("busy");
    let h = Harness::new(&srv.base, 1).expect("harness");
    let a = h.publish("busy", publisher_cfg()).expect("first publisher");
    wait(Duration::from_secs(5), "publisher connected", || a.peer.connected());
    assert_eq!(h.try_publish_status("busy").expect("second POST"), 409);
    // Another room is unaffected, and the room is free again after DELETE.
    assert_eq!(h.try_publish_status("other-room").expect("POST other room"), 201);
    h.delete(&a).expect("DELETE");
    assert_eq!(h.try_publish_status("busy").expect("POST after DELETE"), 201);
}

#[test]
fn sessions_are_freed_after_delete() {
    let _machine = MACHINE.read().unwrap_or_else(|e| e.into_inner());
    let srv = Server::start("churn");
    let h = Harness::new(&srv.base, 1).expect("harness");
    for i in 0..100 {
        let room = format!("churn-{i}");
        let p = h.publish(&room, publisher_cfg()).unwrap_or_else(|e| panic!("pair {i}: publish: {e}"));
        let v = h.view(&room).unwrap_or_else(|e| panic!("pair {i}: view: {e}"));
        // A short connection: let ICE/DTLS come up (bounded), then tear down.
        let _ = Harness::wait_for(Duration::from_millis(500), "pair connected", || p.peer.connected() && v.peer.connected());
        h.delete(&v).unwrap_or_else(|e| panic!("pair {i}: DELETE viewer: {e}"));
        h.delete(&p).unwrap_or_else(|e| panic!("pair {i}: DELETE publisher: {e}"));
    }
    let mut hz = srv.healthz();
    let deadline = Instant::now() + Duration::from_secs(2);
    while hz["sessions"].as_u64() != Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        hz = srv.healthz();
    }
    eprintln!("churn: healthz after 100 pairs: sessions {} created {} closed {}", hz["sessions"], hz["stats"]["sessions_created"], hz["stats"]["sessions_closed"]);
    for field in ["sessions", "publishers", "viewers", "rooms"] {
        assert_eq!(hz[field].as_u64(), Some(0), "{field} after 100 create/DELETE pairs: {hz}");
    }
    assert_eq!(hz["stats"]["sessions_created"].as_u64(), Some(200), "{hz}");
    assert_eq!(hz["stats"]["sessions_closed"].as_u64(), Some(200), "{hz}");
    // Deleted resources are gone.
    let r = srv.http.request("DELETE", "/whip/conn/00000000000000000000000000000000", None).expect("DELETE unknown");
    assert_eq!(r.status, 404);
}
