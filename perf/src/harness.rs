//! Connecting peers to a server: WHIP/WHEP over HTTP, placement on driver threads, teardown.
//!
//! Why it exists: both the `sfumato-perf` scenarios and the integration tests need the same steps
//! (offer → POST → answer → hand to a driver → wait for media → DELETE), plus measurement windows
//! keyed on the publisher's probe counters. Keeping them here makes the tests and the benchmark measure
//! the same way.

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Driver, Peer, PeerError, PeerShared, PendingPeer, PublisherConfig, Role};
use crate::http_client::{HttpClient, HttpError};
use crate::probe::Kind;
use crate::stats::Window;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("201 without a Location header")]
    NoLocation,
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// A live WHIP or WHEP session of this harness.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub room: String,
    /// `Location` of the resource (`/whip/conn/<id>` or `/whep/conn/<id>`).
    pub location: String,
    pub peer: Arc<PeerShared>,
    /// Publisher stream id (written into its probes).
    pub stream_id: Option<u32>,
    /// When the POST started: join time is measured from here.
    pub post_started: Instant,
    /// How long the POST took.
    pub post_duration: Duration,
    driver: usize,
}

impl Session {
    /// POST → first counted video packet, if it arrived.
    pub fn join_time(&self) -> Option<Duration> {
        self.peer.first_video().map(|t| t.saturating_duration_since(self.post_started))
    }
    /// POST → ICE + DTLS connected.
    pub fn connect_time(&self) -> Option<Duration> {
        self.peer.connected_at().map(|t| t.saturating_duration_since(self.post_started))
    }
}

/// Driver threads plus the HTTP client for one server.
pub struct Harness {
    http: HttpClient,
    drivers: Vec<Driver>,
    local_ip: IpAddr,
    /// Viewers also offer H.264 (for rooms fed by RTMP).
    viewer_h264: bool,
    /// Viewer sockets take GSO messages whole (`UDP_GRO`).
    viewer_gro: bool,
}

impl Harness {
    /// `threads` driver threads (≥ 1). With 2 or more, thread 0 is kept for publishers.
    pub fn new(target: &str, threads: usize) -> Result<Self, HarnessError> {
        let http = HttpClient::new(target, Duration::from_secs(10))?;
        // The local address the OS routes to the server from: our host candidate.
        let local_ip = UdpSocket::bind((if http.addr().is_ipv4() { "0.0.0.0" } else { "::" }, 0))
            .and_then(|s| {
                s.connect(http.addr())?;
                s.local_addr()
            })
            .map(|a| a.ip())
            .map_err(PeerError::Socket)?;
        let drivers = (0..threads.max(1)).map(|i| Driver::spawn(&format!("perf-driver-{i}"))).collect();
        Ok(Self { http, drivers, local_ip, viewer_h264: false, viewer_gro: false })
    }

    /// Viewers joined from now on also offer H.264 (an RTMP publisher's video is H.264).
    pub fn with_h264_viewers(mut self) -> Self {
        self.viewer_h264 = true;
        self
    }

    /// Viewers joined from now on read the server's GSO messages whole (`--receiver-gro`, [`crate::gro`]).
    pub fn with_gro_viewers(mut self, on: bool) -> Self {
        self.viewer_gro = on;
        self
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    pub fn threads(&self) -> usize {
        self.drivers.len()
    }

    fn pick_driver(&self, role: Role) -> usize {
        if self.drivers.len() == 1 {
            return 0;
        }
        match role {
            Role::Publisher => 0,
            Role::Viewer => (1..self.drivers.len()).min_by_key(|&i| self.drivers[i].load()).unwrap_or(0),
        }
    }

    fn connect(&self, role: Role, room: &str, cfg: Option<PublisherConfig>) -> Result<Session, HarnessError> {
        self.connect_via(&self.http, role, room, cfg)
    }

    fn connect_via(&self, http: &HttpClient, role: Role, room: &str, cfg: Option<PublisherConfig>) -> Result<Session, HarnessError> {
        let (pending, offer) = PendingPeer::offer_codecs(self.local_ip, role, cfg, self.viewer_h264 && role == Role::Viewer)?;
        if self.viewer_gro && role == Role::Viewer {
            pending.receive_gso_batches().map_err(PeerError::Socket)?;
        }
        let path = match role {
            Role::Publisher => format!("/whip/{room}"),
            Role::Viewer => format!("/whep/{room}"),
        };
        let post_started = Instant::now();
        let resp = http.post_sdp(&path, &offer)?;
        let post_duration = post_started.elapsed();
        let location = resp.header("location").ok_or(HarnessError::NoLocation)?.to_string();
        let peer = match pending.accept(&resp.text()) {
            Ok(p) => p,
            Err(e) => {
                let _ = http.delete(&location);
                return Err(e.into());
            }
        };
        let driver = self.pick_driver(role);
        let shared = self.drivers[driver].add(peer)?;
        Ok(Session {
            role,
            room: room.to_string(),
            location,
            peer: shared,
            stream_id: cfg.map(|c| c.stream_id),
            post_started,
            post_duration,
            driver,
        })
    }

    /// Hands a peer negotiated elsewhere (e.g. by the Janus adapter) to a driver thread and returns its
    /// session; `location` is whatever identifies it on the server.
    pub fn add_peer(&self, peer: Peer, role: Role, room: &str, location: String, post_started: Instant, post_duration: Duration) -> Result<Session, HarnessError> {
        let driver = self.pick_driver(role);
        let shared = self.drivers[driver].add(peer)?;
        Ok(Session { role, room: room.to_string(), location, peer: shared, stream_id: None, post_started, post_duration, driver })
    }

    /// WHIP-publishes synthetic media to `room`. Media starts once ICE/DTLS connect.
    pub fn publish(&self, room: &str, cfg: PublisherConfig) -> Result<Session, HarnessError> {
        self.connect(Role::Publisher, room, Some(cfg))
    }

    /// WHEP-plays `room`.
    pub fn view(&self, room: &str) -> Result<Session, HarnessError> {
        self.connect(Role::Viewer, room, None)
    }

    /// WHEP-plays `room` through another server's HTTP API (e.g. another node of a cluster), on this
    /// harness's driver threads, so peers of several servers share the same threads and clock.
    pub fn view_via(&self, http: &HttpClient, room: &str) -> Result<Session, HarnessError> {
        self.connect_via(http, Role::Viewer, room, None)
    }

    /// DELETEs a session made with [`Harness::view_via`] on the server it was made on.
    pub fn delete_via(&self, http: &HttpClient, s: &Session) -> Result<(), HarnessError> {
        let r = http.delete(&s.location);
        self.drop_peer(s);
        r.map(|_| ()).map_err(Into::into)
    }

    /// Tries a WHIP POST and returns the HTTP status without keeping anything (for refusal tests).
    pub fn try_publish_status(&self, room: &str) -> Result<u16, HarnessError> {
        let (pending, offer) = PendingPeer::offer(self.local_ip, Role::Publisher, Some(PublisherConfig::default()))?;
        let r = self.http.request("POST", &format!("/whip/{room}"), Some(("application/sdp", offer.as_bytes())))?;
        if r.status == 201 {
            if let Some(loc) = r.header("location") {
                let _ = self.http.delete(loc);
            }
        }
        drop(pending);
        Ok(r.status)
    }

    /// DELETEs the session on the server, then stops the local peer.
    pub fn delete(&self, s: &Session) -> Result<(), HarnessError> {
        let r = self.http.delete(&s.location);
        self.drop_peer(s);
        r.map(|_| ()).map_err(Into::into)
    }

    /// Stops the local peer without telling the server.
    pub fn drop_peer(&self, s: &Session) {
        self.drivers[s.driver].remove(s.peer.id);
    }

    /// Polls `cond` every 10 ms until it holds or `timeout` passes.
    pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            if cond() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(HarnessError::Timeout(timeout, what.to_string()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A measurement window over one publisher and its viewers, keyed on probe counters:
/// [`MeasureWindow::open`] records the publisher's next counters, [`MeasureWindow::close`] the end, and
/// each viewer counts the unique packets it got inside `[start, end)`. In-flight packets still count
/// after `close`, so wait a little before reading.
#[derive(Debug, Clone)]
pub struct MeasureWindow {
    pub stream_id: u32,
    pub start: [u64; 2],
    pub end: Option<[u64; 2]>,
}

impl MeasureWindow {
    pub fn open(publisher: &Session, viewers: &[Session]) -> Self {
        let stream_id = publisher.stream_id.expect("a publisher session");
        let start = [publisher.peer.sent(Kind::Video), publisher.peer.sent(Kind::Audio)];
        Self::open_at(stream_id, start, viewers)
    }

    /// Opens a window for a publisher that is not a [`Session`] (e.g. a plain-RTP source): `start` is its
    /// next (video, audio) probe counters.
    pub fn open_at(stream_id: u32, start: [u64; 2], viewers: &[Session]) -> Self {
        for v in viewers {
            let mut st = v.peer.stats();
            for kind in [Kind::Video, Kind::Audio] {
                st.open_window(kind, Window { stream_id, start: start[kind.index()], end: u64::MAX });
            }
            st.latency_us.reset();
        }
        Self { stream_id, start, end: None }
    }

    pub fn close(&mut self, publisher: &Session, viewers: &[Session]) {
        self.close_at([publisher.peer.sent(Kind::Video), publisher.peer.sent(Kind::Audio)], viewers);
    }

    /// Closes the window at the publisher's (video, audio) counters `end`.
    pub fn close_at(&mut self, end: [u64; 2], viewers: &[Session]) {
        for v in viewers {
            let mut st = v.peer.stats();
            for kind in [Kind::Video, Kind::Audio] {
                st.close_window(kind, end[kind.index()]);
            }
        }
        self.end = Some(end);
    }

    /// Packets of `kind` the publisher sent inside the window (0 while open).
    pub fn sent(&self, kind: Kind) -> u64 {
        self.end.map(|e| e[kind.index()] - self.start[kind.index()]).unwrap_or(0)
    }

    /// (received, expected) of `kind` for one viewer.
    pub fn viewer(&self, v: &Session, kind: Kind) -> (u64, u64) {
        (v.peer.stats().kinds[kind.index()].window_received, self.sent(kind))
    }
}
