//! str0m peers (RTP mode) driven by plain std threads: the synthetic publisher and the measuring viewer.
//!
//! Why it exists: the load test needs hundreds of real WebRTC peers (ICE, DTLS, SRTP, RTCP, NACK) without
//! an async runtime. A [`Driver`] is one thread that owns many peers, each with its own non-blocking UDP
//! socket. Its loop: handle commands, run timeouts and publisher schedules, `ppoll` all sockets (at most
//! 1 ms), feed datagrams to the owning `Rtc`, and drain `poll_output` after every mutation (str0m's
//! single-mutation rule), sending `Transmit`s straight away.
//!
//! Negotiation (SDP offer → HTTP → answer) happens on the caller's thread in [`Peer::negotiate`]; the
//! connected-to-be peer is then moved into a driver. Shared state ([`PeerShared`]) is read by the
//! controller through atomics and a mutex that only the driver locks per packet (uncontended).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, VideoOrientation};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::gro;
use crate::probe::{self, Kind, Probe};
use crate::raw_rtp::RawRtpStats;
use crate::stats::ViewerStats;

/// Generates the DTLS certificate every peer of the process reuses (generation costs milliseconds).
pub fn shared_cert() -> DtlsCert {
    static CERT: std::sync::OnceLock<DtlsCert> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags().dtls_provider.generate_certificate().expect("DTLS certificate generation")
    })
    .clone()
}

/// Errors while setting up a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("udp socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("ice candidate: {0}")]
    Candidate(String),
    #[error("sdp: {0}")]
    Sdp(String),
    #[error("the answer has no {0:?} media we can use")]
    MissingMedia(MediaKind),
    #[error("driver thread is gone")]
    DriverGone,
}

/// What kind of peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Viewer,
}

/// Publisher traffic shape.
#[derive(Debug, Clone, Copy)]
pub struct PublisherConfig {
    /// Video bits per second (payload).
    pub bitrate_bps: u64,
    pub fps: u32,
    /// Packets per video frame; `None` = as many ~1100-byte packets as the bitrate needs.
    pub packets_per_frame: Option<u32>,
    /// A keyframe every this many frames (plus whenever the server asks).
    pub gop: u32,
    /// Send 20 ms Opus-like audio packets.
    pub audio: bool,
    pub audio_payload_bytes: usize,
    /// Written into every probe; identifies this publisher on the viewer side.
    pub stream_id: u32,
    /// Header extensions put on every packet (tests of what the server forwards; none by default).
    pub video_orientation: Option<VideoOrientation>,
    pub audio_level: Option<i8>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            bitrate_bps: 1_000_000,
            fps: 30,
            packets_per_frame: None,
            gop: 60,
            audio: true,
            audio_payload_bytes: 100,
            stream_id: next_stream_id(),
            video_orientation: None,
            audio_level: None,
        }
    }
}

/// A process-unique stream id.
pub fn next_stream_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Target payload size per RTP packet when the packet count is derived from the bitrate.
pub const TARGET_PACKET_BYTES: usize = 1100;

impl PublisherConfig {
    /// (packets per frame, payload bytes per packet) that hit the bitrate.
    pub fn frame_shape(&self) -> (u32, usize) {
        let frame_bytes = (self.bitrate_bps / 8 / self.fps.max(1) as u64).max(probe::HEADER_LEN as u64) as usize;
        let ppf = self.packets_per_frame.unwrap_or_else(|| frame_bytes.div_ceil(TARGET_PACKET_BYTES) as u32).max(1);
        (ppf, (frame_bytes / ppf as usize).max(probe::HEADER_LEN))
    }
}

/// State shared between the driver thread and the controller.
#[derive(Debug)]
pub struct PeerShared {
    pub role: Role,
    pub id: u64,
    connected: AtomicBool,
    dead: AtomicBool,
    error: Mutex<Option<String>>,
    /// Publisher: next probe counter per kind = packets sent so far.
    pub sent: [AtomicU64; 2],
    pub keyframes_sent: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Publisher: REMB messages received (bitrate limits from the server) and the last one's bits/s.
    pub remb_received: AtomicU64,
    pub last_remb_bps: AtomicU64,
    /// Viewer: ns since the probe epoch of the first counted video packet (0 = none yet).
    first_video_ns: AtomicU64,
    /// ns since the probe epoch of `Event::Connected` (0 = not yet).
    connected_ns: AtomicU64,
    stats: Mutex<ViewerStats>,
}

impl PeerShared {
    fn new(role: Role, id: u64) -> Self {
        Self {
            role,
            id,
            connected: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            error: Mutex::new(None),
            sent: [AtomicU64::new(0), AtomicU64::new(0)],
            keyframes_sent: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            remb_received: AtomicU64::new(0),
            last_remb_bps: AtomicU64::new(0),
            first_video_ns: AtomicU64::new(0),
            connected_ns: AtomicU64::new(0),
            stats: Mutex::new(ViewerStats::default()),
        }
    }
    /// ICE + DTLS up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    /// The peer failed or was removed.
    pub fn dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn fail(&self, why: String) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        e.get_or_insert(why);
        self.dead.store(true, Ordering::Release);
    }
    /// Probes sent so far of `kind` (= the next counter value).
    pub fn sent(&self, kind: Kind) -> u64 {
        self.sent[kind.index()].load(Ordering::Acquire)
    }
    /// When the first video packet (a keyframe start) arrived.
    pub fn first_video(&self) -> Option<Instant> {
        match self.first_video_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(probe::epoch() + Duration::from_nanos(ns)),
        }
    }
    /// When ICE + DTLS came up.
    pub fn connected_at(&self) -> Option<Instant> {
        match self.connected_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(probe::epoch() + Duration::from_nanos(ns)),
        }
    }
    /// The viewer's statistics (the driver updates them per packet).
    pub fn stats(&self) -> MutexGuard<'_, ViewerStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct PubState {
    cfg: PublisherConfig,
    video: (Mid, Pt),
    audio: Option<(Mid, Pt)>,
    ppf: u32,
    payload_bytes: usize,
    video_seq: u64,
    audio_seq: u64,
    video_ts_base: u32,
    audio_ts_base: u32,
    frame_no: u64,
    audio_no: u64,
    next_frame: Option<Instant>,
    next_audio: Option<Instant>,
    force_key: bool,
    buf: Vec<u8>,
}

/// One str0m peer with its socket.
pub struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    next_timeout: Instant,
    publisher: Option<PubState>,
    shared: Arc<PeerShared>,
}

/// A negotiated-but-not-yet-connected peer waiting for the server's answer.
pub struct PendingPeer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: SdpPendingOffer,
    role: Role,
    publisher_cfg: Option<PublisherConfig>,
    id: u64,
    mids: Vec<Mid>,
}

impl PendingPeer {
    /// This peer's socket takes the server's GSO messages whole ([`crate::gro`]; `--receiver-gro`).
    pub fn receive_gso_batches(&self) -> std::io::Result<()> {
        gro::enable(self.socket.as_raw_fd())
    }

    /// Starts a peer: binds a UDP socket on `local_ip`, builds an `Rtc`, and creates the SDP offer to POST.
    pub fn offer(local_ip: std::net::IpAddr, role: Role, publisher_cfg: Option<PublisherConfig>) -> Result<(Self, String), PeerError> {
        Self::offer_codecs(local_ip, role, publisher_cfg, false)
    }

    /// [`PendingPeer::offer`], also offering H.264 when `h264` (viewers of an RTMP-fed room).
    pub fn offer_codecs(local_ip: std::net::IpAddr, role: Role, publisher_cfg: Option<PublisherConfig>, h264: bool) -> Result<(Self, String), PeerError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .set_dtls_cert(shared_cert())
            .clear_codecs()
            .enable_vp8(true)
            .enable_h264(h264)
            .enable_opus(true, false)
            .build(Instant::now());
        let cand = Candidate::host(local, "udp").map_err(|e| PeerError::Candidate(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let dir = match role {
            Role::Publisher => Direction::SendOnly,
            Role::Viewer => Direction::RecvOnly,
        };
        let mut api = rtc.sdp_api();
        let mut mids = vec![api.add_media(MediaKind::Video, dir, Some("sfumato-perf".into()), Some("video".into()), None)];
        if role == Role::Viewer || publisher_cfg.is_some_and(|c| c.audio) {
            mids.push(api.add_media(MediaKind::Audio, dir, Some("sfumato-perf".into()), Some("audio".into()), None));
        }
        let (offer, pending) = api.apply().ok_or_else(|| PeerError::Sdp("no offer produced".into()))?;
        let text = offer.to_sdp_string();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok((Self { rtc, socket, local, pending, role, publisher_cfg, id, mids }, text))
    }

    /// Applies the server's SDP answer; the result is ready for [`Driver::add`].
    pub fn accept(self, answer_sdp: &str) -> Result<Peer, PeerError> {
        let Self { mut rtc, socket, local, pending, role, publisher_cfg, id, mids } = self;
        let answer = SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        rtc.sdp_api().accept_answer(pending, answer).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let publisher = match (role, publisher_cfg) {
            (Role::Publisher, Some(cfg)) => {
                let video = media_pt(&rtc, &mids, MediaKind::Video, Codec::Vp8).ok_or(PeerError::MissingMedia(MediaKind::Video))?;
                let audio = if cfg.audio {
                    Some(media_pt(&rtc, &mids, MediaKind::Audio, Codec::Opus).ok_or(PeerError::MissingMedia(MediaKind::Audio))?)
                } else {
                    None
                };
                let (ppf, payload_bytes) = cfg.frame_shape();
                let seed = (id as u32).wrapping_mul(2_654_435_761);
                Some(PubState {
                    cfg,
                    video,
                    audio,
                    ppf,
                    payload_bytes,
                    video_seq: (seed % 30_000) as u64,
                    audio_seq: (seed.rotate_left(8) % 30_000) as u64,
                    video_ts_base: seed,
                    audio_ts_base: seed.rotate_left(16),
                    frame_no: 0,
                    audio_no: 0,
                    next_frame: None,
                    next_audio: None,
                    force_key: true,
                    buf: Vec::with_capacity(payload_bytes.max(cfg.audio_payload_bytes).max(probe::HEADER_LEN)),
                })
            }
            (Role::Publisher, None) => return Err(PeerError::Sdp("publisher without config".into())),
            (Role::Viewer, _) => None,
        };
        Ok(Peer {
            rtc,
            socket,
            local,
            next_timeout: Instant::now(),
            publisher,
            shared: Arc::new(PeerShared::new(role, id)),
        })
    }
}

impl Peer {
    /// A receive-only viewer answering a server's offer (Janus's streaming plugin offers; WHEP servers
    /// answer). Binds a UDP socket on `local_ip`; returns the peer, ready for [`Driver::add`], and the SDP
    /// answer to send back.
    pub fn answer(local_ip: std::net::IpAddr, offer_sdp: &str) -> Result<(Peer, String), PeerError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 40);
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .set_dtls_cert(shared_cert())
            .clear_codecs()
            .enable_vp8(true)
            .enable_opus(true, false)
            .build(Instant::now());
        let cand = Candidate::host(local, "udp").map_err(|e| PeerError::Candidate(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let peer = Peer {
            rtc,
            socket,
            local,
            next_timeout: Instant::now(),
            publisher: None,
            shared: Arc::new(PeerShared::new(Role::Viewer, id)),
        };
        Ok((peer, answer.to_sdp_string()))
    }
}

/// The (mid, pt) of the first negotiated m-line of `kind` whose remote PTs include `codec`.
fn media_pt(rtc: &Rtc, mids: &[Mid], kind: MediaKind, codec: Codec) -> Option<(Mid, Pt)> {
    for &mid in mids {
        let Some(m) = rtc.media(mid) else { continue };
        if m.kind() != kind {
            continue;
        }
        let remote = m.remote_pts();
        if let Some(p) = rtc.codec_config().find(|p| p.spec().codec == codec && remote.contains(&p.pt())) {
            return Some((mid, p.pt()));
        }
    }
    None
}

impl Peer {
    pub fn shared(&self) -> Arc<PeerShared> {
        self.shared.clone()
    }

    /// Feeds the datagrams of one receive (one, or a GSO message's segments) to str0m. `Err` = the peer is dead.
    fn receive<'a>(&mut self, now: Instant, source: SocketAddr, datagrams: impl Iterator<Item = &'a [u8]>) -> Result<(), String> {
        for d in datagrams {
            if let Some(ssrc) = crate::stats::rtcp_sender(d).filter(|_| self.shared.role == Role::Viewer) {
                self.shared.stats().record_rtcp(ssrc);
            }
            let Ok(r) = Receive::new(Protocol::Udp, source, self.local, d) else { continue };
            self.rtc.handle_input(Input::Receive(now, r)).map_err(|e| format!("receive: {e}"))?;
            self.drain()?;
        }
        Ok(())
    }

    /// Drains `poll_output` until a timeout: sends transmits, handles events. `Err` = the peer is dead.
    fn drain(&mut self) -> Result<(), String> {
        loop {
            match self.rtc.poll_output().map_err(|e| format!("poll_output: {e}"))? {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    // A full socket buffer drops the datagram like a network would.
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => self.on_event(e)?,
            }
        }
    }

    fn on_event(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::Connected => {
                let ns = probe::ns_since_epoch(Instant::now()).max(1);
                self.shared.connected_ns.store(ns, Ordering::Release);
                self.shared.connected.store(true, Ordering::Release);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Err("ICE disconnected".into());
            }
            Event::KeyframeRequest(_) => {
                self.shared.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &mut self.publisher {
                    p.force_key = true;
                }
            }
            Event::RtpPacket(pkt) => {
                if self.shared.role != Role::Viewer {
                    return Ok(());
                }
                let arrived = probe::ns_since_epoch(pkt.timestamp);
                let mut st = self.shared.stats();
                st.ext.record(&pkt.header.ext_vals);
                if !st.rtp_ssrcs.contains(&*pkt.header.ssrc) {
                    st.rtp_ssrcs.push(*pkt.header.ssrc);
                }
                match probe::parse(&pkt.payload) {
                    Some(p) => {
                        if st.record(&p, arrived, pkt.header.sequence_number, pkt.header.timestamp) {
                            self.shared.first_video_ns.store(arrived.max(1), Ordering::Release);
                        }
                    }
                    None => {
                        // Media without a probe (e.g. ffmpeg via RTMP): sequence/timestamp accounting.
                        st.foreign_packets += 1;
                        let clock = pkt.time.frequency().get();
                        st.raw.record(*pkt.seq_no, pkt.time.numer(), clock, arrived);
                        if RawRtpStats::kind_of(clock) == Kind::Video && self.shared.first_video_ns.load(Ordering::Relaxed) == 0 {
                            self.shared.first_video_ns.store(arrived.max(1), Ordering::Release);
                        }
                    }
                }
            }
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Remb { estimate, .. }) => {
                self.shared.remb_received.fetch_add(1, Ordering::Relaxed);
                self.shared.last_remb_bps.store(estimate.as_u64(), Ordering::Relaxed);
            }
            Event::Closed => return Err("closed by the server".into()),
            _ => {}
        }
        Ok(())
    }

    /// Writes every publisher packet that is due at `now`. Returns whether anything was written.
    fn publish_due(&mut self, now: Instant) -> bool {
        let Some(p) = &mut self.publisher else { return false };
        if !self.shared.connected() {
            return false;
        }
        let frame_period = Duration::from_nanos(1_000_000_000 / p.cfg.fps.max(1) as u64);
        let audio_period = Duration::from_millis(20);
        let mut wrote = false;
        let next_frame = *p.next_frame.get_or_insert(now);
        if now >= next_frame {
            let key = p.force_key || p.frame_no % p.cfg.gop.max(1) as u64 == 0;
            p.force_key = false;
            if key {
                self.shared.keyframes_sent.fetch_add(1, Ordering::Relaxed);
            }
            let ts = p.video_ts_base.wrapping_add((p.frame_no * 90_000 / p.cfg.fps.max(1) as u64) as u32);
            let mut api = self.rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(p.video.0, None) {
                for i in 0..p.ppf {
                    let counter = self.shared.sent[0].load(Ordering::Relaxed);
                    let probe = Probe {
                        kind: Kind::Video,
                        keyframe: key,
                        frame_start: i == 0,
                        stream_id: p.cfg.stream_id,
                        counter,
                        sent_ns: probe::ns_since_epoch(Instant::now()),
                    };
                    probe::write(&mut p.buf, &probe, p.payload_bytes);
                    let payload: Arc<[u8]> = Arc::from(&p.buf[..]);
                    tx.write_rtp(
                        RtpWrite::new(p.video.1, SeqNo::from(p.video_seq), ts, now, payload)
                            .marker(i + 1 == p.ppf)
                            .ext_vals(ExtensionValues { video_orientation: p.cfg.video_orientation, ..Default::default() })
                            .nackable(true),
                    );
                    p.video_seq += 1;
                    self.shared.sent[0].store(counter + 1, Ordering::Release);
                }
                wrote = true;
            }
            p.frame_no += 1;
            let mut next = next_frame + frame_period;
            if now.saturating_duration_since(next) > Duration::from_secs(1) {
                next = now + frame_period; // fell far behind (suspended?): don't burst
            }
            p.next_frame = Some(next);
        }
        if let Some((mid, pt)) = p.audio {
            let next_audio = *p.next_audio.get_or_insert(now);
            if now >= next_audio {
                let ts = p.audio_ts_base.wrapping_add((p.audio_no * 960) as u32);
                let mut api = self.rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                    let counter = self.shared.sent[1].load(Ordering::Relaxed);
                    let probe = Probe {
                        kind: Kind::Audio,
                        keyframe: false,
                        frame_start: true,
                        stream_id: p.cfg.stream_id,
                        counter,
                        sent_ns: probe::ns_since_epoch(Instant::now()),
                    };
                    probe::write(&mut p.buf, &probe, p.cfg.audio_payload_bytes);
                    let payload: Arc<[u8]> = Arc::from(&p.buf[..]);
                    let ext = ExtensionValues { audio_level: p.cfg.audio_level, voice_activity: p.cfg.audio_level.map(|_| true), ..Default::default() };
                    tx.write_rtp(RtpWrite::new(pt, SeqNo::from(p.audio_seq), ts, now, payload).ext_vals(ext));
                    p.audio_seq += 1;
                    self.shared.sent[1].store(counter + 1, Ordering::Release);
                    wrote = true;
                }
                p.audio_no += 1;
                let mut next = next_audio + audio_period;
                if now.saturating_duration_since(next) > Duration::from_secs(1) {
                    next = now + audio_period;
                }
                p.next_audio = Some(next);
            }
        }
        wrote
    }

    /// Earliest instant this peer needs the loop to run.
    fn wake_at(&self) -> Instant {
        let mut t = self.next_timeout;
        if let Some(p) = &self.publisher {
            if self.shared.connected() {
                for n in [p.next_frame, p.next_audio].into_iter().flatten() {
                    t = t.min(n);
                }
            }
        }
        t
    }
}

enum Cmd {
    Add(Box<Peer>),
    Remove(u64),
}

/// One thread running many peers.
pub struct Driver {
    tx: Option<Sender<Cmd>>,
    join: Option<JoinHandle<()>>,
    load: Arc<AtomicU64>,
}

impl Driver {
    pub fn spawn(name: &str) -> Self {
        let (tx, rx) = mpsc::channel();
        let load = Arc::new(AtomicU64::new(0));
        let l2 = load.clone();
        let join = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(rx, l2))
            .expect("spawn driver thread");
        Self { tx: Some(tx), join: Some(join), load }
    }

    /// Hands a negotiated peer to this thread.
    pub fn add(&self, peer: Peer) -> Result<Arc<PeerShared>, PeerError> {
        let shared = peer.shared();
        self.load.fetch_add(1, Ordering::Relaxed);
        self.tx.as_ref().ok_or(PeerError::DriverGone)?.send(Cmd::Add(Box::new(peer))).map_err(|_| PeerError::DriverGone)?;
        Ok(shared)
    }

    /// Drops a peer (its socket closes; nothing more is sent).
    pub fn remove(&self, id: u64) {
        if let Some(tx) = &self.tx {
            if tx.send(Cmd::Remove(id)).is_ok() {
                self.load.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Peers handed to this driver and not removed.
    pub fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Longest a driver sleeps in `ppoll`.
const MAX_WAIT: Duration = Duration::from_millis(1);

fn run(rx: Receiver<Cmd>, _load: Arc<AtomicU64>) {
    let mut peers: Vec<Peer> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    // Room for a whole GSO message on a `--receiver-gro` socket.
    let mut buf = vec![0u8; 65536];
    loop {
        // Commands.
        loop {
            match rx.try_recv() {
                Ok(Cmd::Add(p)) => {
                    let mut p = *p;
                    if let Err(e) = p.drain() {
                        p.shared.fail(e);
                    } else {
                        peers.push(p);
                    }
                }
                Ok(Cmd::Remove(id)) => {
                    if let Some(i) = peers.iter().position(|p| p.shared.id == id) {
                        let mut p = peers.swap_remove(i);
                        p.rtc.disconnect();
                        p.shared.dead.store(true, Ordering::Release);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    for p in &peers {
                        p.shared.dead.store(true, Ordering::Release);
                    }
                    return;
                }
            }
        }

        // Timeouts and publisher schedules.
        let now = Instant::now();
        let mut i = 0;
        while i < peers.len() {
            let p = &mut peers[i];
            let mut res = Ok(());
            if p.publish_due(now) {
                res = p.drain();
            }
            if res.is_ok() && now >= p.next_timeout {
                res = p.rtc.handle_input(Input::Timeout(now)).map_err(|e| format!("timeout: {e}")).and_then(|_| p.drain());
            }
            if let Err(e) = res {
                let p = peers.swap_remove(i);
                p.shared.fail(e);
                continue;
            }
            i += 1;
        }

        // Wait for datagrams.
        let wake = peers.iter().map(Peer::wake_at).min().unwrap_or(now + MAX_WAIT);
        let now = Instant::now();
        let wait = wake.saturating_duration_since(now).min(MAX_WAIT);
        fds.clear();
        fds.extend(peers.iter().map(|p| libc::pollfd { fd: p.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        let ts = libc::timespec { tv_sec: 0, tv_nsec: wait.as_nanos() as libc::c_long };
        if fds.is_empty() {
            std::thread::sleep(wait.max(Duration::from_micros(200)));
            continue;
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd; ts is a valid timespec; null sigmask.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        if n <= 0 {
            continue;
        }
        let mut dead = Vec::new();
        for (idx, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let p = &mut peers[idx];
            loop {
                match gro::recv(p.socket.as_raw_fd(), &mut buf) {
                    Ok(got) => {
                        let now = Instant::now();
                        let Some(source) = got.from else { continue };
                        if let Err(e) = p.receive(now, source, got.datagrams(&buf)) {
                            dead.push((idx, e));
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // ICMP port unreachable etc. surface as errors on the next recv: ignore.
                    Err(_) => break,
                }
            }
        }
        for (idx, e) in dead.into_iter().rev() {
            let p = peers.swap_remove(idx);
            p.shared.fail(e);
        }
    }
}
