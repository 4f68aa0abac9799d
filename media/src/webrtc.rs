//! One WebRTC peer — a WHIP publisher or a WHEP viewer — as a sans-IO state machine around str0m.
//!
//! str0m runs in RTP mode: publisher packets come out as RTP (header + payload, SRTP already removed) and go
//! into viewers with `StreamTx::write_rtp`, so forwarding never depacketizes. The payload is str0m's own
//! `Arc<[u8]>`, shared by every viewer on every core without a copy. This type owns no socket and no clock:
//! the per-core shell passes datagrams and `now` in and sends what [`WebRtcSession::poll`] returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{CodecConfig, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, RawPacket, RtpWrite, SeqNo, Ssrc};
use str0m::bwe::{Bitrate, BweKind};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcError};

use crate::direct_send::{DirectSend, DirectTrack, DirectWrite, ExtIds};
use crate::dtls_keys::{self, KeySlot};
use crate::packet::{Codec, ForwardedExt, ForwardedPacket, TrackKind};
use crate::srtp_send::{SrtpError, SrtpSendContext};
use crate::seq_rewrite::{SeqRewriter, Skip};
use crate::ssrc_lock::{SsrcLock, SsrcVerdict};

/// A new session may take this long to connect (ICE + DTLS) before it is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one keyframe request per publisher per this interval while a request is outstanding.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// Once the requested keyframe arrived, a new request may follow after this much (viewers joining in a burst).
pub const KEYFRAME_REQUEST_MIN_GAP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Viewer,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid SDP offer: {0}")]
    BadSdp(String),
    #[error("offer has no usable media: {0}")]
    NoUsableMedia(&'static str),
    #[error(
        "the room's video is H.264 profile-level-id {stream:06x} and the offer has no compatible H.264 profile \
         (RFC 6184: profiles must match) nor other usable media"
    )]
    IncompatibleH264 { stream: u32 },
    #[error("no usable host candidate: {0}")]
    Candidate(String),
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
}

/// A trickle-ICE PATCH body (`application/trickle-ice-sdpfrag`, RFC 8840/9725) that can't be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrickleError {
    #[error("fragment has a=ice-ufrag without a=ice-pwd (or the reverse)")]
    PartialCredentials,
    #[error("fragment carries neither usable candidates nor ICE credentials{}", .0.as_ref().map(|e| format!(" (last bad candidate: {e})")).unwrap_or_default())]
    Empty(Option<String>),
}

/// What a trickle-ICE PATCH did.
#[derive(Debug, PartialEq, Eq)]
pub enum TrickleOutcome {
    /// Remote candidates added (may be 0 for a bare `a=end-of-candidates`).
    Candidates(usize),
    /// The client sent new ICE credentials: ICE restarted, here is the server's answer fragment.
    Restarted { answer_fragment: String },
}

/// What a session wants done after an input.
#[derive(Debug)]
pub enum SessionEvent {
    /// Send `data` to `to` from the socket bound to `from`.
    Transmit { from: SocketAddr, to: SocketAddr, data: Vec<u8> },
    /// A publisher RTP packet to forward.
    Rtp(ForwardedPacket),
    /// A viewer asked for a keyframe (PLI/FIR).
    KeyframeRequested,
    /// ICE + DTLS are up: media can flow.
    Connected,
    /// RTCP feedback counted since the previous one (from str0m's periodic stats).
    Feedback(FeedbackDelta),
    /// Viewer: the bandwidth estimate towards it (bits/s) — the REMB its client sent, or str0m's TWCC
    /// estimate when the session was accepted with `viewer_bwe`. Reported when it moved by more than 10 % or [`BITRATE_REPORT_INTERVAL`] after the last report.
    BitrateEstimate(u64),
}

/// A viewer's unchanged bandwidth estimate is re-reported this often (the receivers expire stale values).
pub const BITRATE_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// str0m's bandwidth estimation (TWCC, `viewer_bwe`) starts from this estimate. str0m then paces at twice
/// the estimate, so it starts high enough not to hold back a typical stream. Off by default: with it, a
/// paired fan-out run (50 viewers, 1 Mbit/s) cost ~2x server CPU per packet and ~10x p99 latency.
pub const BWE_INITIAL: Bitrate = Bitrate::kbps(2_500);


/// RTCP feedback a session saw between two stats events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackDelta {
    /// NACKs the peer sent us (a viewer asking for retransmissions).
    pub nacks_received: u64,
    /// PLIs + FIRs the peer sent us.
    pub keyframe_requests_received: u64,
    /// NACKs we sent the peer (a publisher's lost packets).
    pub nacks_sent: u64,
    /// Packets the direct send path sent again for the viewer's NACKs.
    pub retransmitted: u64,
    /// Retransmissions the viewer's NACKs asked for beyond its budget (not sent).
    pub retransmissions_refused: u64,
}

/// How often str0m reports per-stream stats (NACK/PLI counts, RTT, loss).
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// The latest link quality str0m reported for a session.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkQuality {
    pub rtt: Option<Duration>,
    /// Fraction of packets lost (0..1), from the RTCP receiver reports.
    pub loss: Option<f32>,
}

/// Why a forwarded packet was not written to a viewer (counted by the caller, never an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSkip {
    NotConnected,
    NoTrackOfKind,
    CodecNotNegotiated,
    Rewrite(Skip),
    /// The direct send path could not protect the packet (logged; never expected).
    Protect,
}

/// How a session treats viewers (server configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerOptions {
    /// Estimate each viewer's bandwidth with transport-wide congestion control (str0m's BWE and pacer).
    pub bwe: bool,
    /// Write viewers' media ourselves ([`crate::direct_send`]) instead of through str0m's `write_rtp`. Not
    /// with `bwe` (str0m's estimator must see what is sent).
    pub direct_send: bool,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        Self { bwe: false, direct_send: true }
    }
}

/// A viewer session's direct send path.
enum Direct {
    /// str0m writes the media (publishers, `bwe`, or `direct_send` off).
    Off,
    /// The answer names our SSRCs; the keys come with DTLS.
    Planned { slot: KeySlot, ext: ExtIds, tracks: Vec<DirectTrack> },
    On(Box<DirectSend>),
}

struct ViewerTrack {
    mid: Mid,
    kind: TrackKind,
    rewriter: SeqRewriter,
    /// Last publisher payload type and the viewer PT it maps to (None = not negotiated).
    pt_map: Option<(u8, u64, Option<PayloadParams>)>,
    /// The SSRC of the track's send stream once found: str0m looks streams up by SSRC in a hash map, but by
    /// mid with a scan of all of them, which showed in the per-packet profile.
    ssrc: Option<Ssrc>,
}

/// One WebRTC peer.
pub struct WebRtcSession {
    rtc: Rtc,
    role: Role,
    local_ufrag: String,
    created_at: Instant,
    connected: bool,
    next_timeout: Instant,
    /// Publisher: its source id (set once the room accepted it) and the mids it sends.
    source: u64,
    publisher_mids: Vec<(Mid, TrackKind)>,
    /// Publisher: the one SSRC per kind that is forwarded (simulcast layers and extra tracks are not).
    ssrc_lock: SsrcLock,
    last_keyframe_request: Option<Instant>,
    /// A keyframe arrived since the last request (the request is answered).
    keyframe_since_request: bool,
    keyframe_wanted: bool,
    /// Viewer: when it last asked its publisher for a keyframe.
    last_keyframe_ask: Option<Instant>,
    /// Viewer: one outgoing track per kind.
    viewer_tracks: Vec<ViewerTrack>,
    /// The client's ICE credentials (from the offer, then from ICE restarts).
    remote_ice: Option<IceCreds>,
    /// The answer's first accepted media section (`m=` line, mid), named in ICE-restart answer fragments.
    first_section: Option<(String, String)>,
    /// Host candidates this session advertises.
    local_candidates: Vec<SocketAddr>,
    /// Bumped by every ICE restart (part of the resource's ETag).
    ice_generation: u32,
    /// The local address the peer's last accepted datagram arrived on (the path in use).
    path_local: Option<SocketAddr>,
    /// Cumulative NACK/PLI/FIR counts per (mid, direction) at the last stats event: (nacks, plis + firs).
    feedback_seen: Vec<(Mid, bool, u64, u64)>,
    quality: LinkQuality,
    direct: Direct,
    /// Datagrams of the direct path, handed out by the next [`poll`](WebRtcSession::poll).
    direct_out: Vec<Vec<u8>>,
    /// (local, remote) of str0m's last DTLS or RTCP datagram: where the direct path sends (the ICE pair str0m
    /// nominated for sending; its STUN responses go to whichever pair the client checked).
    send_path: Option<(SocketAddr, SocketAddr)>,
    /// str0m had input since it was last polled to its timeout.
    str0m_dirty: bool,
    /// Viewer: the last bandwidth estimate reported as [`SessionEvent::BitrateEstimate`], and when.
    bitrate_reported: Option<(u64, Instant)>,
}

/// Builds the Rtc configuration shared by both roles. `h264`: the one H.264 format to offer instead of
/// str0m's default list (a viewer of a room whose video is H.264: see [`WebRtcSession::accept`]).
///
/// A viewer without bandwidth estimation (`bwe` off, the default) is not offered transport-wide congestion
/// control: nothing here would read its feedback, which is a stream of RTCP packets to decrypt and parse
/// per viewer, and str0m would stamp and log every packet sent to it for nothing. Without transport-cc a
/// browser runs its receive-side estimator and sends REMB instead, which is the estimate the bitrate
/// feedback (`SessionEvent::BitrateEstimate`) forwards to the publisher.
fn new_rtc(now: Instant, cert: Option<DtlsCert>, role: Role, bwe: bool, h264: Option<H264Format>, direct: bool) -> Rtc {
    let mut cfg = Rtc::builder().set_rtp_mode(true).set_ice_lite(true).set_stats_interval(Some(STATS_INTERVAL));
    if direct {
        // The SRTP keys for our own packets, and the viewer's RTCP about our SSRCs (str0m doesn't know them).
        cfg = cfg.set_crypto_provider(dtls_keys::crypto_provider()).enable_raw_packets(true);
    }
    if let Some(f) = h264 {
        let codecs = cfg.codec_config();
        codecs.enable_h264(false);
        // str0m's default H.264 payload types (just removed), so nothing else collides with them.
        codecs.add_h264(Pt::from(127), Some(Pt::from(121)), f.packetization_mode == 1, f.profile_level_id);
    }
    if role == Role::Viewer && !bwe {
        let mut exts = ExtensionMap::empty();
        for (id, ext) in ExtensionMap::standard().iter() {
            if *ext != Extension::TransportSequenceNumber {
                exts.set(id, ext.clone());
            }
        }
        cfg = cfg.set_extension_map(exts);
        for p in cfg.codec_config().iter_mut() {
            p.set_fb_transport_cc(false);
        }
    }
    if bwe {
        cfg = cfg.enable_bwe(Some(BWE_INITIAL));
    }
    if let Some(cert) = cert {
        cfg = cfg.set_dtls_cert(cert);
    }
    cfg.build(now)
}

/// The H.264 format a room's video is in: what a viewer's answer must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct H264Format {
    profile_level_id: u32,
    packetization_mode: u8,
}

/// The `profile-level-id` of an H.264 format (None for other codecs, or H.264 without one).
pub fn h264_profile_level_id(params: &PayloadParams) -> Option<u32> {
    H264Format::of(params).map(|f| f.profile_level_id)
}

impl H264Format {
    fn of(params: &PayloadParams) -> Option<Self> {
        let spec = params.spec();
        if spec.codec != str0m::format::Codec::H264 {
            return None;
        }
        Some(H264Format {
            profile_level_id: spec.format.profile_level_id?,
            packetization_mode: spec.format.packetization_mode.unwrap_or(0),
        })
    }
}

/// Media sections of an SDP offer as (mid, kind), read from the text.
fn offered_mids(sdp: &str) -> Vec<(String, TrackKind)> {
    let mut out = Vec::new();
    let mut kind: Option<TrackKind> = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            kind = if rest.starts_with("audio") {
                Some(TrackKind::Audio)
            } else if rest.starts_with("video") {
                Some(TrackKind::Video)
            } else {
                None
            };
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if let Some(k) = kind {
                out.push((mid.to_string(), k));
            }
        }
    }
    out
}

/// The `profile-level-id` values of an offer's H.264 formats (for logs).
fn offered_h264_profiles(sdp: &str) -> Vec<String> {
    let h264_pts: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=rtpmap:"))
        .filter_map(|r| r.split_once(' '))
        .filter(|(_, enc)| enc.to_ascii_uppercase().starts_with("H264/"))
        .map(|(pt, _)| pt)
        .collect();
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=fmtp:"))
        .filter_map(|r| r.split_once(' '))
        .filter(|(pt, _)| h264_pts.contains(pt))
        .filter_map(|(_, f)| f.split(';').find_map(|kv| kv.trim().strip_prefix("profile-level-id=")))
        .map(str::to_string)
        .collect()
}

/// The session-level (or first media-level) ICE credentials of an offer.
fn offer_ice_credentials(sdp: &str) -> Option<IceCreds> {
    let (mut ufrag, mut pwd) = (None, None);
    for line in sdp.lines().map(str::trim_end) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert_with(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert_with(|| v.to_string());
        }
    }
    Some(IceCreds { ufrag: ufrag?, pass: pwd? })
}

/// An answer's sections as line ranges: (start of the `m=` line, end), after the session part.
fn sections(lines: &[&str]) -> Vec<(usize, usize)> {
    let starts: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.starts_with("m=")).map(|(i, _)| i).collect();
    starts.iter().enumerate().map(|(k, &i)| (i, starts.get(k + 1).copied().unwrap_or(lines.len()))).collect()
}

/// Whether an `m=` line rejects its section (port 0, RFC 3264 §6).
fn rejected(m_line: &str) -> bool {
    m_line.split_whitespace().nth(1) == Some("0")
}

/// str0m 0.25 writes the ICE candidates into the answer's first media section even when it rejected that
/// section (a viewer whose video codecs all mismatch, while its audio is accepted): the client then has no
/// candidate for the bundled transport and never connects. Moves them into the first accepted section.
fn answer_with_candidates_in_bundle(answer: &str) -> String {
    let lines: Vec<&str> = answer.lines().collect();
    let secs = sections(&lines);
    let is_cand = |l: &&str| l.starts_with("a=candidate:") || *l == "a=end-of-candidates";
    let (Some(&(r0, r1)), Some(&(a0, a1))) =
        (secs.first().filter(|(i, _)| rejected(lines[*i])), secs.iter().find(|(i, _)| !rejected(lines[*i])))
    else {
        return answer.to_string();
    };
    let moved: Vec<&str> = lines[r0..r1].iter().copied().filter(is_cand).collect();
    if moved.is_empty() || lines[a0..a1].iter().any(is_cand) {
        return answer.to_string();
    }
    // After the accepted section's `c=` line, where str0m puts them in a section of its own.
    let at = (a0..a1).find(|&i| lines[i].starts_with("c=")).unwrap_or(a0);
    let mut out = String::with_capacity(answer.len());
    for (i, line) in lines.iter().enumerate() {
        if (r0..r1).contains(&i) && is_cand(line) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if i == at {
            for c in &moved {
                out.push_str(c);
                out.push_str("\r\n");
            }
        }
    }
    out
}

/// The first section an answer accepted, as (`m=` line, mid): ICE-restart answer fragments name it.
fn first_accepted_section(answer: &str) -> Option<(String, String)> {
    let lines: Vec<&str> = answer.lines().collect();
    sections(&lines).into_iter().filter(|(i, _)| !rejected(lines[*i])).find_map(|(i, end)| {
        let mid = lines[i..end].iter().find_map(|l| l.strip_prefix("a=mid:"))?;
        Some((lines[i].to_string(), mid.to_string()))
    })
}

/// H.264 with packetization-mode=1 and `profile_level_id`, as str0m's defaults build it: an RTMP stream's
/// format, or a room's format as the cluster gossips it.
pub fn h264_params(profile_level_id: u32) -> PayloadParams {
    let mut c = CodecConfig::empty();
    c.add_h264(Pt::from(102), None, true, profile_level_id);
    c.params()[0]
}

pub fn codec_of(params: &PayloadParams) -> Option<Codec> {
    use str0m::format::Codec as C;
    match params.spec().codec {
        C::Opus => Some(Codec::Opus),
        C::Vp8 => Some(Codec::Vp8),
        C::Vp9 => Some(Codec::Vp9),
        C::H264 => Some(Codec::H264),
        C::Av1 => Some(Codec::Av1),
        _ => None,
    }
}

impl WebRtcSession {
    /// Accepts an SDP offer for `role`, returning the session and the SDP answer.
    ///
    /// `room_video`: a viewer's room's current video format, if it has one. When it is H.264, the answer
    /// names exactly that `profile-level-id` (e.g. an RTMP stream's, read from its SPS) instead of echoing
    /// the profiles the viewer offered, so the viewer's decoder is set up for the stream it will get. A
    /// viewer that offered no compatible H.264 profile gets no H.264 in the answer: its other video codecs
    /// (for a later publisher), or no video — it could not decode this stream.
    pub fn accept(
        role: Role,
        offer_sdp: &str,
        candidates: &[SocketAddr],
        cert: Option<DtlsCert>,
        viewer: ViewerOptions,
        room_video: Option<&PayloadParams>,
        now: Instant,
    ) -> Result<(Self, String), SessionError> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SessionError::BadSdp(e.to_string()))?;
        // Bandwidth estimation only when asked for and where it can work: a viewer whose client sends
        // transport-wide feedback (REMB from any viewer is an estimate too). It also turns on str0m's pacer.
        let bwe = viewer.bwe && role == Role::Viewer && offer_sdp.contains("transport-cc");
        let h264 = room_video.filter(|_| role == Role::Viewer).and_then(H264Format::of);
        let direct = role == Role::Viewer && viewer.direct_send && !bwe;
        let mut rtc = new_rtc(now, cert, role, bwe, h264, direct);
        // The DTLS instance is made while the Rtc is built: its key slot is the one created last here.
        let slot = if direct { dtls_keys::take_created() } else { None };
        let mut added = 0;
        for addr in candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    if rtc.add_local_candidate(c).is_some() {
                        added += 1;
                    }
                }
                Err(e) => tracing::debug!(%addr, error = %e, "skipping host candidate"),
            }
        }
        if added == 0 {
            return Err(SessionError::Candidate("none of the configured addresses is usable".into()));
        }
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| match e {
            RtcError::Sdp(e) => SessionError::BadSdp(e.to_string()),
            RtcError::RemoteSdp(e) => SessionError::BadSdp(e),
            other => SessionError::Rtc(other),
        })?;

        // Which m-lines can carry media the way this role needs.
        let wanted = match role {
            Role::Publisher => |d: Direction| matches!(d, Direction::RecvOnly | Direction::SendRecv),
            Role::Viewer => |d: Direction| matches!(d, Direction::SendOnly | Direction::SendRecv),
        };
        let mut usable: Vec<(Mid, TrackKind)> = Vec::new();
        for (mid_text, kind) in offered_mids(offer_sdp) {
            let mid = Mid::from(mid_text.as_str());
            let Some(media) = rtc.media(mid) else { continue };
            let codec_ok = media.remote_pts().iter().any(|pt| {
                rtc.codec_config().iter().any(|p| p.pt() == *pt && codec_of(p).is_some())
            });
            if wanted(media.direction()) && codec_ok && !usable.iter().any(|(_, k)| *k == kind) {
                usable.push((mid, kind));
            }
        }
        let h264_negotiated = usable.iter().any(|(mid, kind)| {
            *kind == TrackKind::Video
                && rtc.media(*mid).is_some_and(|m| {
                    m.remote_pts().iter().any(|pt| {
                        rtc.codec_config().iter().any(|p| p.pt() == *pt && p.spec().codec == str0m::format::Codec::H264)
                    })
                })
        });
        if let (Some(f), false) = (h264, h264_negotiated) {
            tracing::warn!(
                profile_level_id = %format!("{:06x}", f.profile_level_id),
                offered = %offered_h264_profiles(offer_sdp).join(","),
                "viewer offered no H.264 profile compatible with the room's video: it can't play it"
            );
            if usable.is_empty() {
                return Err(SessionError::IncompatibleH264 { stream: f.profile_level_id });
            }
        }
        if usable.is_empty() {
            return Err(SessionError::NoUsableMedia(match role {
                Role::Publisher => "a WHIP offer needs a sendonly/sendrecv audio or video section with Opus, VP8, VP9, H264 or AV1",
                Role::Viewer => "a WHEP offer needs a recvonly/sendrecv audio or video section with Opus, VP8, VP9, H264 or AV1",
            }));
        }
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let mut answer = answer_with_candidates_in_bundle(&answer.to_sdp_string());
        let direct = match slot {
            Some(slot) if role == Role::Viewer => plan_direct(&mut rtc, &usable, &mut answer, slot, now),
            _ => Direct::Off,
        };
        let remote_ice = offer_ice_credentials(offer_sdp);
        let first_section = first_accepted_section(&answer);
        let mut session = WebRtcSession {
            rtc,
            role,
            local_ufrag,
            created_at: now,
            connected: false,
            next_timeout: now,
            source: 0,
            ssrc_lock: SsrcLock::default(),
            publisher_mids: Vec::new(),
            last_keyframe_request: None,
            keyframe_since_request: false,
            keyframe_wanted: false,
            last_keyframe_ask: None,
            viewer_tracks: Vec::new(),
            remote_ice,
            first_section,
            local_candidates: candidates.to_vec(),
            ice_generation: 0,
            path_local: None,
            feedback_seen: Vec::new(),
            quality: LinkQuality::default(),
            direct,
            direct_out: Vec::new(),
            send_path: None,
            str0m_dirty: true,
            bitrate_reported: None,
        };
        match role {
            Role::Publisher => session.publisher_mids = usable,
            Role::Viewer => {
                session.viewer_tracks = usable
                    .into_iter()
                    .map(|(mid, kind)| ViewerTrack {
                        mid,
                        kind,
                        rewriter: SeqRewriter::new(kind == TrackKind::Video),
                        pt_map: None,
                        ssrc: None,
                    })
                    .collect()
            }
        }
        Ok((session, answer))
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// How many ICE restarts this session went through (the resource's ETag changes with it).
    pub fn ice_generation(&self) -> u32 {
        self.ice_generation
    }

    /// Applies a trickle-ICE PATCH fragment. Candidates are added to str0m's agent (with ICE-lite they only
    /// widen what the server accepts; the client's checks still pick the path). A fragment with ICE
    /// credentials different from the current ones is an ICE restart (RFC 9725 §4.4.1): new local
    /// credentials are made, the session's local ufrag changes (the caller must re-register it) and the
    /// answer fragment is returned.
    pub fn apply_trickle(&mut self, fragment: &str) -> Result<TrickleOutcome, TrickleError> {
        let mut ufrag = None;
        let mut pwd = None;
        let mut candidates = Vec::new();
        let mut end_of_candidates = false;
        let mut bad_candidate = None;
        for line in fragment.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                ufrag = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                pwd = Some(v.to_string());
            } else if let Some(c) = line.strip_prefix("a=") {
                if c.starts_with("candidate:") {
                    // Candidates we can't use (mDNS `.local` names, TCP, garbage) are ignored, as RFC 8838
                    // asks of a receiver; the client's connectivity checks decide anyway.
                    match Candidate::from_sdp_string(c) {
                        Ok(cand) => candidates.push(cand),
                        Err(e) => {
                            tracing::debug!(error = %e, "ignoring trickled candidate");
                            bad_candidate = Some(e.to_string());
                        }
                    }
                } else if c == "end-of-candidates" {
                    end_of_candidates = true;
                }
            }
        }
        let creds = match (ufrag, pwd) {
            (Some(ufrag), Some(pass)) => Some(IceCreds { ufrag, pass }),
            (None, None) => None,
            _ => return Err(TrickleError::PartialCredentials),
        };
        if creds.is_none() && candidates.is_empty() && !end_of_candidates {
            return Err(TrickleError::Empty(bad_candidate));
        }
        let restart = matches!((&creds, &self.remote_ice), (Some(new), Some(old)) if new != old);
        self.str0m_dirty = true;
        let mut api = self.rtc.direct_api();
        if restart {
            let local = IceCreds::new();
            api.set_local_ice_credentials(local.clone());
            if let Some(remote) = creds.clone() {
                api.set_remote_ice_credentials(remote);
            }
            self.remote_ice = creds;
            self.local_ufrag = local.ufrag.clone();
            self.ice_generation += 1;
        }
        let added = candidates.len();
        for c in candidates {
            self.rtc.add_remote_candidate(c);
        }
        if !restart {
            return Ok(TrickleOutcome::Candidates(added));
        }
        let local = self.rtc.direct_api().local_ice_credentials();
        let mut frag = format!("a=ice-lite\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", local.ufrag, local.pass);
        if let Some((m_line, mid)) = &self.first_section {
            frag.push_str(&format!("{m_line}\r\na=mid:{mid}\r\n"));
        }
        // Only the address the peer already reaches us on, when known: it is the path that works, and some
        // clients (npm whip-whep 1.2) mangle an answer fragment with several candidates.
        let in_use = self.path_local.filter(|a| self.local_candidates.contains(a));
        let advertised: Vec<SocketAddr> = match in_use {
            Some(a) => vec![a],
            None => self.local_candidates.clone(),
        };
        for (i, addr) in advertised.iter().enumerate() {
            frag.push_str(&format!(
                "a=candidate:{} 1 udp {} {} {} typ host\r\n",
                i + 1,
                2_130_706_431u32.saturating_sub(i as u32),
                addr.ip(),
                addr.port()
            ));
        }
        frag.push_str("a=end-of-candidates\r\n");
        Ok(TrickleOutcome::Restarted { answer_fragment: frag })
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// False once the session is over (disconnected, closed, or never connected in time).
    pub fn is_alive(&self, now: Instant) -> bool {
        self.rtc.is_alive() && (self.connected || now.saturating_duration_since(self.created_at) < CONNECT_TIMEOUT)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn next_timeout(&self) -> Instant {
        match &self.direct {
            Direct::On(d) => d.next_timeout().map_or(self.next_timeout, |t| t.min(self.next_timeout)),
            _ => self.next_timeout,
        }
    }

    /// Whether this viewer's media goes out through the direct send path.
    pub fn direct_send(&self) -> bool {
        matches!(self.direct, Direct::On(_))
    }

    pub fn set_source(&mut self, source: u64) {
        self.source = source;
    }

    /// Feeds one datagram received on `local` from `remote`. Errors are per-packet (garbage from the peer's
    /// address) and don't end the session; call [`poll`](Self::poll) afterwards.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, local: SocketAddr, buf: &[u8]) -> bool {
        let Ok(recv) = Receive::new(Protocol::Udp, remote, local, buf) else { return false };
        self.str0m_dirty = true;
        match self.rtc.handle_input(Input::Receive(now, recv)) {
            Ok(()) => {
                self.path_local = Some(local);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "datagram rejected by session");
                false
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Direct::On(d) = &mut self.direct {
            d.poll_reports(now, &mut self.direct_out);
            if now < self.next_timeout {
                return;
            }
        }
        self.str0m_timeout(now);
    }

    fn str0m_timeout(&mut self, now: Instant) {
        self.str0m_dirty = true;
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "timeout handling failed; closing session");
            self.rtc.disconnect();
        }
    }

    /// Ends the session now.
    pub fn close(&mut self) {
        self.str0m_dirty = true;
        self.rtc.disconnect();
    }

    /// Drains str0m's output into `out` until it asks for a timeout. Must follow every input or write.
    ///
    /// A timeout that is already due is handled right here: str0m's pacer only releases packets written with
    /// `write_rtp` after a timeout, so without this a forwarded packet would wait for the next timer tick.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<SessionEvent>) {
        // A direct-send viewer's str0m only has work after input or at its deadline, not per packet.
        if !(self.direct_send() && !self.str0m_dirty && now < self.next_timeout) {
            self.poll_str0m(now, out);
        }
        if let Some((from, to)) = self.send_path {
            out.extend(self.direct_out.drain(..).map(|data| SessionEvent::Transmit { from, to, data }));
        }
    }

    fn poll_str0m(&mut self, now: Instant, out: &mut Vec<SessionEvent>) {
        let mut due_rounds = 0;
        loop {
            if !self.rtc.is_alive() {
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    if t <= now && due_rounds < 4 {
                        due_rounds += 1;
                        self.str0m_timeout(now);
                        continue;
                    }
                    self.str0m_dirty = false;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if on_nominated_path(&t.contents) {
                        self.send_path = Some((t.source, t.destination));
                    }
                    // A direct viewer's RTCP comes from DirectSend; str0m's own (sender reports of the streams
                    // renamed out of the answer) would only tell the viewer about SSRCs it never sees, at the
                    // price of a datagram each. They still showed where to send, just above.
                    if self.direct_send() && is_rtcp(&t.contents) {
                        continue;
                    }
                    out.push(SessionEvent::Transmit { from: t.source, to: t.destination, data: t.contents.into() })
                }
                Ok(Output::Event(ev)) => self.on_event(now, ev, out),
                Err(e) => {
                    tracing::debug!(error = %e, "session failed; closing");
                    self.rtc.disconnect();
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, ev: Event, out: &mut Vec<SessionEvent>) {
        match ev {
            Event::Connected => {
                if !self.start_direct(now) {
                    return;
                }
                self.connected = true;
                out.push(SessionEvent::Connected);
                if self.keyframe_wanted {
                    self.request_keyframe(now);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // Consent expired: str0m leaves the decision to us (no trickle-ICE recovery here).
                self.rtc.disconnect();
            }
            Event::RtpPacket(pkt) if self.role == Role::Publisher => {
                let pt = pkt.header.payload_type;
                let Some(params) = self.rtc.codec_config().find(|p| p.pt() == pt).copied() else { return };
                let Some(codec) = codec_of(&params) else { return };
                let (kind, ssrc) = (codec.kind(), *pkt.header.ssrc);
                let source = match self.ssrc_lock.check(kind, ssrc, pkt.timestamp, self.source) {
                    SsrcVerdict::Forward { source, switched } => {
                        if switched {
                            // Both kinds now carry a new source: the viewers' video waits for a keyframe.
                            tracing::info!(ssrc, ?kind, "publisher's stream changed SSRC; forwarding the new one");
                            self.request_keyframe(now);
                        }
                        source
                    }
                    SsrcVerdict::Ignore { first } => {
                        if first {
                            let forwarded = self.ssrc_lock.forwarded(kind);
                            tracing::info!(ssrc, ?kind, ?forwarded, "publisher sends more than one stream of a kind (simulcast?); only the first is forwarded");
                        }
                        return;
                    }
                };
                let keyframe_start = crate::keyframe::is_keyframe_start(codec, &pkt.payload);
                if keyframe_start {
                    self.keyframe_wanted = false;
                    self.keyframe_since_request = true;
                }
                out.push(SessionEvent::Rtp(ForwardedPacket {
                    codec,
                    params,
                    source,
                    seq: *pkt.seq_no,
                    timestamp: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    keyframe_start,
                    clock_rate: params.spec().clock_rate.get(),
                    received_at: pkt.timestamp,
                    ext: ForwardedExt::of(&pkt.header.ext_vals),
                    payload: pkt.payload,
                }));
            }
            Event::KeyframeRequest(_) if self.role == Role::Viewer => out.push(SessionEvent::KeyframeRequested),
            Event::RawPacket(raw) => {
                if let (RawPacket::RtcpRx(rtcp), Direct::On(d)) = (raw.as_ref(), &mut self.direct) {
                    let o = d.handle_rtcp(rtcp, now, &mut self.direct_out);
                    if o.nacks + o.keyframe_requests > 0 {
                        out.push(SessionEvent::Feedback(FeedbackDelta {
                            nacks_received: o.nacks,
                            keyframe_requests_received: o.keyframe_requests,
                            nacks_sent: 0,
                            retransmitted: o.retransmitted,
                            retransmissions_refused: o.retransmissions_refused,
                        }));
                    }
                    if o.keyframe_requests > 0 {
                        out.push(SessionEvent::KeyframeRequested);
                    }
                    if let Some(bps) = o.remb_bps.filter(|b| *b > 0) {
                        if bitrate_report_due(self.bitrate_reported, bps, now) {
                            self.bitrate_reported = Some((bps, now));
                            out.push(SessionEvent::BitrateEstimate(bps));
                        }
                    }
                    self.quality = LinkQuality { rtt: o.rtt.or(self.quality.rtt), loss: o.loss.or(self.quality.loss) };
                }
            }
            Event::EgressBitrateEstimate(kind) if self.role == Role::Viewer => {
                let bps = match kind {
                    BweKind::Twcc { estimate, can_probe: true } => estimate.as_u64(),
                    BweKind::Remb { estimate, .. } => estimate.as_u64(),
                    _ => return,
                };
                if bps > 0 && bitrate_report_due(self.bitrate_reported, bps, now) {
                    self.bitrate_reported = Some((bps, now));
                    out.push(SessionEvent::BitrateEstimate(bps));
                }
            }
            Event::MediaEgressStats(st) => {
                let (nacks, kf) = self.feedback_delta(st.mid, true, st.nacks, st.plis + st.firs);
                self.quality = LinkQuality { rtt: st.rtt.or(self.quality.rtt), loss: st.loss.or(self.quality.loss) };
                if nacks + kf > 0 {
                    out.push(SessionEvent::Feedback(FeedbackDelta {
                        nacks_received: nacks,
                        keyframe_requests_received: kf,
                        ..Default::default()
                    }));
                }
            }
            Event::MediaIngressStats(st) => {
                let (nacks, _) = self.feedback_delta(st.mid, false, st.nacks, st.plis + st.firs);
                self.quality = LinkQuality { rtt: st.rtt.or(self.quality.rtt), loss: st.loss.or(self.quality.loss) };
                if nacks > 0 {
                    out.push(SessionEvent::Feedback(FeedbackDelta { nacks_sent: nacks, ..Default::default() }));
                }
            }
            _ => {}
        }
    }

    /// At DTLS connect: turns a planned direct send path on with the captured keys. False (and the session
    /// closed) when there are none: the answer named SSRCs only the direct path sends on.
    fn start_direct(&mut self, now: Instant) -> bool {
        let (slot, ext, tracks) = match std::mem::replace(&mut self.direct, Direct::Off) {
            Direct::Planned { slot, ext, tracks } => (slot, ext, tracks),
            other => {
                self.direct = other;
                return true;
            }
        };
        let ctx = slot.get().cloned().ok_or_else(|| "no SRTP keys were captured".to_string()).and_then(|k| {
            let profile = k.profile.ok_or_else(|| "unknown SRTP profile".to_string())?;
            SrtpSendContext::new(&dtls_keys::crypto_provider(), profile, &k.material, k.active).map_err(|e| e.to_string())
        });
        match ctx {
            Ok(ctx) => {
                tracing::debug!(ufrag = %self.local_ufrag, profile = ?ctx.profile(), "direct send path on");
                self.direct = Direct::On(Box::new(DirectSend::new(ctx, ext, tracks, now)));
                true
            }
            Err(why) => {
                tracing::error!(ufrag = %self.local_ufrag, %why, "direct send path can't start; closing the viewer");
                self.rtc.disconnect();
                false
            }
        }
    }

    /// The latest RTT and loss str0m reported.
    pub fn link_quality(&self) -> LinkQuality {
        self.quality
    }

    /// Turns cumulative counters of one stream into increases since the last report.
    fn feedback_delta(&mut self, mid: Mid, egress: bool, nacks: u64, keyframes: u64) -> (u64, u64) {
        match self.feedback_seen.iter_mut().find(|(m, e, _, _)| *m == mid && *e == egress) {
            Some(seen) => {
                let d = (nacks.saturating_sub(seen.2), keyframes.saturating_sub(seen.3));
                (seen.2, seen.3) = (nacks, keyframes);
                d
            }
            None => {
                self.feedback_seen.push((mid, egress, nacks, keyframes));
                (nacks, keyframes)
            }
        }
    }

    /// Publisher: ask for a keyframe (PLI), at most once per [`KEYFRAME_REQUEST_INTERVAL`] while a request is
    /// unanswered, or [`KEYFRAME_REQUEST_MIN_GAP`] after its keyframe arrived. If the video
    /// stream isn't known yet (no packet seen), the request is sent once it is.
    pub fn request_keyframe(&mut self, now: Instant) -> bool {
        if self.role != Role::Publisher {
            return false;
        }
        if let Some(last) = self.last_keyframe_request {
            let gap = if self.keyframe_since_request { KEYFRAME_REQUEST_MIN_GAP } else { KEYFRAME_REQUEST_INTERVAL };
            if now.saturating_duration_since(last) < gap {
                return false;
            }
        }
        let mut sent = false;
        let mut api = self.rtc.direct_api();
        // The forwarded stream's own SSRC (with simulcast, a mid has one stream per layer); before any video
        // arrived, every video mid.
        if let Some(rx) = self.ssrc_lock.forwarded(TrackKind::Video).and_then(|ssrc| api.stream_rx(&ssrc.into())) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            sent = true;
        } else {
            for (mid, _) in self.publisher_mids.iter().filter(|(_, k)| *k == TrackKind::Video) {
                if let Some(rx) = api.stream_rx_by_mid(*mid, None) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    sent = true;
                }
            }
        }
        if sent {
            self.last_keyframe_request = Some(now);
            self.keyframe_since_request = false;
        } else {
            self.keyframe_wanted = true;
        }
        sent
    }

    /// Publisher: asks it to send at most `bps` (REMB on its video streams). Returns false when there is no
    /// video stream yet (nothing sent). The caller rate-limits.
    pub fn request_remb(&mut self, bps: u64) -> bool {
        if self.role != Role::Publisher || !self.connected {
            return false;
        }
        let mut sent = false;
        let mut api = self.rtc.direct_api();
        for (mid, kind) in &self.publisher_mids {
            if *kind != TrackKind::Video {
                continue;
            }
            if let Some(rx) = api.stream_rx_by_mid(*mid, None) {
                rx.request_remb(Bitrate::bps(bps));
                sent = true;
            }
        }
        sent
    }

    /// Viewer: whether to ask the publisher for a keyframe now because this viewer is waiting for one (a
    /// joined-early viewer, a re-publish, a lost keyframe). Throttled to one ask per 100 ms; the publisher
    /// side throttles again.
    pub fn should_ask_keyframe(&mut self, now: Instant) -> bool {
        match self.last_keyframe_ask {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_REQUEST_MIN_GAP * 2 => false,
            _ => {
                self.last_keyframe_ask = Some(now);
                true
            }
        }
    }

    /// Viewer: writes one forwarded packet with this viewer's payload type and its own sequence numbers.
    /// Call [`poll`](Self::poll) afterwards (once per batch is enough).
    pub fn write_forwarded(&mut self, pkt: &ForwardedPacket, now: Instant) -> Result<(), WriteSkip> {
        if !self.connected {
            return Err(WriteSkip::NotConnected);
        }
        let kind = pkt.kind();
        let Some(idx) = self.viewer_tracks.iter().position(|t| t.kind == kind) else {
            return Err(WriteSkip::NoTrackOfKind);
        };
        let pt_in = *pkt.params.pt();
        let cached = match self.viewer_tracks[idx].pt_map {
            Some((pt, source, out)) if pt == pt_in && source == pkt.source => out,
            _ => {
                let out = self.match_viewer_params(self.viewer_tracks[idx].mid, &pkt.params);
                if out.is_none() {
                    // Once per publisher codec change, not per packet: this viewer gets no media of this kind.
                    tracing::warn!(
                        ufrag = %self.local_ufrag,
                        codec = ?pkt.codec,
                        fmtp = ?pkt.params.spec().format,
                        "viewer did not negotiate the publisher's codec/profile: its packets are skipped"
                    );
                }
                self.viewer_tracks[idx].pt_map = Some((pt_in, pkt.source, out));
                out
            }
        };
        let Some(out_params) = cached else { return Err(WriteSkip::CodecNotNegotiated) };
        let track = &mut self.viewer_tracks[idx];
        let rw = track
            .rewriter
            .rewrite(pkt.source, pkt.seq, pkt.timestamp, pkt.clock_rate, pkt.keyframe_start, now)
            .map_err(WriteSkip::Rewrite)?;
        if let Direct::On(d) = &mut self.direct {
            let Some(i) = d.track_index(track.mid) else { return Err(WriteSkip::NoTrackOfKind) };
            let w = DirectWrite {
                pt: *out_params.pt(),
                rtx_pt: out_params.resend().map(|p| *p),
                seq: rw.seq,
                timestamp: rw.timestamp,
                clock_rate: pkt.clock_rate,
                marker: pkt.marker,
                ext: pkt.ext,
                payload: &pkt.payload,
            };
            return d.write(i, &w, now, &mut self.direct_out).map_err(|e| {
                match e {
                    // A duplicate from upstream (counted as skipped): not worth a log line each.
                    SrtpError::IndexReused { .. } => tracing::debug!(ufrag = %self.local_ufrag, error = %e, "direct send: packet not sent"),
                    _ => tracing::warn!(ufrag = %self.local_ufrag, error = %e, "direct send: packet not sent"),
                }
                WriteSkip::Protect
            });
        }
        self.str0m_dirty = true;
        let mut api = self.rtc.direct_api();
        let tx = match track.ssrc.and_then(|ssrc| api.stream_tx(&ssrc)) {
            Some(tx) => tx,
            None => {
                let Some(tx) = api.stream_tx_by_mid(track.mid, None) else { return Err(WriteSkip::NoTrackOfKind) };
                track.ssrc = Some(tx.ssrc());
                tx
            }
        };
        let write = RtpWrite::new(out_params.pt(), SeqNo::from(rw.seq), rw.timestamp, pkt.received_at, pkt.payload.clone())
            .marker(pkt.marker)
            .ext_vals(pkt.ext.values())
            .nackable(kind == TrackKind::Video);
        tx.write_rtp(write);
        Ok(())
    }

    /// Viewer: the source its `kind` track currently forwards (video: since that source's keyframe), if any.
    /// A GOP replay is only written to a track that hasn't started on the replayed source yet.
    pub fn forwarding_source(&self, kind: TrackKind) -> Option<u64> {
        self.viewer_tracks.iter().find(|t| t.kind == kind).and_then(|t| t.rewriter.source())
    }

    /// The viewer's negotiated payload params on `mid` that best match the publisher's.
    fn match_viewer_params(&self, mid: Mid, publisher: &PayloadParams) -> Option<PayloadParams> {
        let media = self.rtc.media(mid)?;
        let remote = media.remote_pts();
        let candidates: Vec<PayloadParams> =
            self.rtc.codec_config().iter().filter(|p| remote.contains(&p.pt())).copied().collect();
        if !matches!(media.kind(), MediaKind::Audio | MediaKind::Video) {
            return None;
        }
        CodecConfig::new_from_payload_params(candidates).match_params(*publisher).copied()
    }
}

/// Whether a viewer's estimate `bps` is worth reporting after `last`: first one, moved by more than 10 %,
/// or [`BITRATE_REPORT_INTERVAL`] since the last report.
/// Plans a viewer's direct send path: our own SSRC (and RTX SSRC) per track, named in `answer` in place of
/// str0m's, with the header extension ids and CNAMEs the answer gives. `Off` if a track has no str0m send
/// stream to take the place of (then str0m sends, as without the direct path).
fn plan_direct(rtc: &mut Rtc, usable: &[(Mid, TrackKind)], answer: &mut String, slot: KeySlot, now: Instant) -> Direct {
    let mut renames: Vec<(u32, u32)> = Vec::new();
    let mut planned = Vec::new();
    let mut api = rtc.direct_api();
    for (mid, kind) in usable {
        let Some(tx) = api.stream_tx_by_mid(*mid, None) else {
            tracing::warn!(%mid, "no send stream for a viewer track: str0m sends this viewer's media");
            return Direct::Off;
        };
        let (ssrc, rtx) = (*tx.ssrc(), tx.rtx().map(|s| *s));
        let ours = fresh_ssrc(&renames, ssrc);
        renames.push((ssrc, ours));
        let ours_rtx = rtx.map(|r| {
            let n = fresh_ssrc(&renames, r);
            renames.push((r, n));
            n
        });
        planned.push((*mid, *kind, ours, ours_rtx));
    }
    *answer = rename_ssrcs(answer, &renames);
    let ext = ExtIds::from_sdp(answer);
    let tracks = planned
        .into_iter()
        .map(|(mid, kind, ssrc, rtx)| {
            let cname = ssrc_cname(answer, ssrc).unwrap_or_else(|| format!("sfumato-{ssrc:08x}"));
            DirectTrack::new(mid, ssrc, rtx, cname, kind == TrackKind::Video, now)
        })
        .collect();
    Direct::Planned { slot, ext, tracks }
}

/// Whether str0m sends `datagram` on its nominated pair: DTLS and RTP/RTCP do (RFC 7983: first byte 20..=63
/// or 128..=191), STUN (0..=3) answers the pair that was checked.
fn on_nominated_path(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| matches!(b, 20..=63 | 128..=191))
}

/// Whether `datagram` is (S)RTCP: RFC 5761 §4, packet types 192..=223 after an RTP-range first byte.
fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && matches!(datagram[0], 128..=191) && matches!(datagram[1], 192..=223)
}

/// A random SSRC that is neither `avoid` nor any SSRC in `taken`.
fn fresh_ssrc(taken: &[(u32, u32)], avoid: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut n = 0u64;
    loop {
        let mut h = state.build_hasher();
        h.write_u64(n);
        let v = h.finish() as u32;
        if v != 0 && v != avoid && !taken.iter().any(|(a, b)| *a == v || *b == v) {
            return v;
        }
        n += 1;
    }
}

/// `sdp` with the SSRCs of `a=ssrc:` and `a=ssrc-group:` lines renamed by `map` (old, new).
fn rename_ssrcs(sdp: &str, map: &[(u32, u32)]) -> String {
    let rename = |tok: &str| -> String {
        match tok.parse::<u32>().ok().and_then(|v| map.iter().find(|(old, _)| *old == v)) {
            Some((_, new)) => new.to_string(),
            None => tok.to_string(),
        }
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive("\r\n") {
        let body = line.trim_end_matches("\r\n");
        if let Some(rest) = body.strip_prefix("a=ssrc:") {
            let (ssrc, attr) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str("a=ssrc:");
            out.push_str(&rename(ssrc));
            if !attr.is_empty() {
                out.push(' ');
                out.push_str(attr);
            }
        } else if let Some(rest) = body.strip_prefix("a=ssrc-group:") {
            let mut parts = rest.split(' ');
            out.push_str("a=ssrc-group:");
            out.push_str(parts.next().unwrap_or_default());
            for p in parts {
                out.push(' ');
                out.push_str(&rename(p));
            }
        } else {
            out.push_str(body);
        }
        out.push_str(&line[body.len()..]);
    }
    out
}

/// The CNAME an SDP gives `ssrc` (`a=ssrc:<ssrc> cname:<name>`).
fn ssrc_cname(sdp: &str, ssrc: u32) -> Option<String> {
    let prefix = format!("a=ssrc:{ssrc} cname:");
    sdp.lines().find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(str::to_string))
}

fn bitrate_report_due(last: Option<(u64, Instant)>, bps: u64, now: Instant) -> bool {
    match last {
        None => true,
        Some((prev, t)) => {
            now.saturating_duration_since(t) >= BITRATE_REPORT_INTERVAL || bps.abs_diff(prev) * 10 > prev
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrate_reports_are_throttled() {
        let t = Instant::now();
        assert!(bitrate_report_due(None, 1_000_000, t));
        let last = Some((1_000_000, t));
        assert!(!bitrate_report_due(last, 1_090_000, t + Duration::from_millis(100)));
        assert!(bitrate_report_due(last, 1_200_000, t + Duration::from_millis(100)));
        assert!(bitrate_report_due(last, 850_000, t + Duration::from_millis(100)));
        assert!(bitrate_report_due(last, 1_000_000, t + BITRATE_REPORT_INTERVAL));
    }

    #[test]
    fn reads_mids_from_offer_text() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(offered_mids(sdp), vec![("0".into(), TrackKind::Audio), ("1".into(), TrackKind::Video)]);
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=rtpmap:96 VP8/90000\r\na=ssrc:1 cname:x\r\n";

    fn publisher() -> WebRtcSession {
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        WebRtcSession::accept(Role::Publisher, OFFER, &[addr], None, ViewerOptions::default(), None, Instant::now()).unwrap().0
    }

    #[test]
    fn trickle_adds_candidates_without_restart() {
        let mut s = publisher();
        let ufrag = s.local_ufrag().to_string();
        let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
            a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host\r\na=end-of-candidates\r\n";
        assert_eq!(s.apply_trickle(frag), Ok(TrickleOutcome::Candidates(1)));
        assert_eq!(s.local_ufrag(), ufrag);
        assert_eq!(s.ice_generation(), 0);
    }

    #[test]
    fn new_credentials_restart_ice() {
        let mut s = publisher();
        let old = s.local_ufrag().to_string();
        let frag = "a=ice-ufrag:wxyz\r\na=ice-pwd:bbbbbbbbbbbbbbbbbbbbbbbb\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n";
        let TrickleOutcome::Restarted { answer_fragment } = s.apply_trickle(frag).unwrap() else { panic!("no restart") };
        assert_ne!(s.local_ufrag(), old);
        assert!(answer_fragment.contains(&format!("a=ice-ufrag:{}\r\n", s.local_ufrag())), "{answer_fragment}");
        assert!(answer_fragment.contains("a=mid:0") && answer_fragment.contains("typ host"), "{answer_fragment}");
        assert_eq!(s.ice_generation(), 1);
        // The same credentials again are plain trickle.
        assert_eq!(s.apply_trickle(frag), Ok(TrickleOutcome::Candidates(0)));
    }

    #[test]
    fn bad_fragments_are_refused() {
        let mut s = publisher();
        assert_eq!(s.apply_trickle("a=ice-ufrag:only\r\n"), Err(TrickleError::PartialCredentials));
        assert_eq!(s.apply_trickle("hello"), Err(TrickleError::Empty(None)));
        assert!(matches!(s.apply_trickle("a=candidate:garbage\r\n"), Err(TrickleError::Empty(Some(_)))));
        // An unusable candidate next to a good one is skipped.
        let frag = "a=candidate:1 1 udp 1 host.local 5000 typ host\r\na=candidate:2 1 udp 1 192.0.2.1 5000 typ host\r\n";
        assert_eq!(s.apply_trickle(frag), Ok(TrickleOutcome::Candidates(1)));
    }

    /// A WHEP viewer's offer: recvonly video with the given (pt, rtpmap, fmtp) formats, optionally audio.
    fn viewer_offer(video: &[(u8, &str, &str)], audio: bool) -> String {
        let pts: Vec<String> = video.iter().map(|(pt, _, _)| pt.to_string()).collect();
        let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        sdp += &format!("a=group:BUNDLE 0{}\r\n", if audio { " 1" } else { "" });
        sdp += &format!("m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n", pts.join(" "));
        sdp += "a=ice-ufrag:abcd\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        sdp += "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n";
        sdp += "a=setup:actpass\r\n";
        for (pt, map, fmtp) in video {
            sdp += &format!("a=rtpmap:{pt} {map}\r\n");
            if !fmtp.is_empty() {
                sdp += &format!("a=fmtp:{pt} {fmtp}\r\n");
            }
        }
        if audio {
            sdp += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\na=rtcp-mux\r\n";
            sdp += "a=rtpmap:111 opus/48000/2\r\n";
        }
        sdp
    }

    const BROWSER_H264: &[(u8, &str, &str)] = &[
        (96, "VP8/90000", ""),
        (102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
        (106, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        (112, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
        (116, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
    ];

    fn accept_viewer(offer: &str, room_video: Option<&PayloadParams>) -> Result<String, SessionError> {
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        WebRtcSession::accept(Role::Viewer, offer, &[addr], None, ViewerOptions::default(), room_video, Instant::now()).map(|(_, a)| a)
    }

    #[test]
    fn direct_viewer_answer_names_our_ssrcs_not_str0ms() {
        let offer = viewer_offer(BROWSER_H264, true).replace(
            "a=rtcp-mux\r\n",
            "a=rtcp-mux\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n",
        );
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let (mut s, answer) = WebRtcSession::accept(Role::Viewer, &offer, &[addr], None, ViewerOptions::default(), None, Instant::now()).unwrap();
        let Direct::Planned { tracks, ext, .. } = &s.direct else { panic!("a viewer plans the direct path") };
        assert_eq!(tracks.len(), 2);
        assert!(ext.mid.is_some() && ext.abs_send_time.is_some(), "{ext:?}");
        let named: Vec<u32> = answer.lines().filter_map(|l| l.strip_prefix("a=ssrc:")?.split(' ').next()?.parse().ok()).collect();
        let ours: Vec<u32> = tracks.iter().flat_map(|t| [Some(t.ssrc), t.rtx_ssrc]).flatten().collect();
        assert!(!named.is_empty() && named.iter().all(|n| ours.contains(n)), "answer names {named:?}, ours {ours:?}");
        assert!(tracks.iter().all(|t| ssrc_cname(&answer, t.ssrc).is_some_and(|c| c == t.cname)));
        let mut api = s.rtc.direct_api();
        for t in tracks {
            let theirs = *api.stream_tx_by_mid(t.mid, None).unwrap().ssrc();
            assert!(!named.contains(&theirs), "str0m's {theirs} is not named");
        }
        // bwe, or the option off: str0m sends, its SSRCs are named.
        for viewer in [ViewerOptions { direct_send: false, ..Default::default() }, ViewerOptions { bwe: true, direct_send: true }] {
            let offer = offer.replace("a=rtcp-mux\r\n", "a=rtcp-mux\r\na=rtcp-fb:96 transport-cc\r\n");
            let (s, _) = WebRtcSession::accept(Role::Viewer, &offer, &[addr], None, viewer, None, Instant::now()).unwrap();
            assert!(matches!(s.direct, Direct::Off), "{viewer:?}");
        }
    }

    #[test]
    fn only_dtls_and_srtp_transmits_set_the_direct_path() {
        assert!(on_nominated_path(&[22, 254, 253])); // DTLS handshake
        assert!(on_nominated_path(&[0x80, 200])); // SRTCP sender report
        assert!(!on_nominated_path(&[0x01, 0x01, 0, 0])); // STUN binding response
        assert!(!on_nominated_path(&[]));
        assert!(!on_nominated_path(&[64]));
        assert!(is_rtcp(&[0x80, 200, 0, 6]) && is_rtcp(&[0x81, 201]));
        assert!(!is_rtcp(&[0x80, 96]) && !is_rtcp(&[0x80, 0xe0]) && !is_rtcp(&[22, 254]) && !is_rtcp(&[0x80]));
    }

    #[test]
    fn ssrcs_are_renamed_only_in_ssrc_lines() {
        let sdp = "m=video 9 UDP 96\r\na=ssrc-group:FID 11 22\r\na=ssrc:11 cname:x\r\na=ssrc:22 msid:a b\r\na=rtpmap:11 x\r\na=ssrc:33 cname:y\r\n";
        let out = rename_ssrcs(sdp, &[(11, 1001), (22, 1002)]);
        assert_eq!(out, "m=video 9 UDP 96\r\na=ssrc-group:FID 1001 1002\r\na=ssrc:1001 cname:x\r\na=ssrc:1002 msid:a b\r\na=rtpmap:11 x\r\na=ssrc:33 cname:y\r\n");
        let fresh = fresh_ssrc(&[(5, 6)], 7);
        assert!(![0, 5, 6, 7].contains(&fresh));
    }

    #[test]
    fn viewer_answer_names_the_room_stream_profile() {
        let offer = viewer_offer(BROWSER_H264, true);
        // No publisher yet: str0m's usual negotiation (the viewer's profiles echoed).
        let echoed = offered_h264_profiles(&accept_viewer(&offer, None).unwrap());
        assert!(echoed.len() > 1 && echoed.contains(&"42e01f".to_string()), "{echoed:?}");
        // An RTMP stream: Main profile level 3.1 (constraint_set1): exactly that, on the viewer's Main PT.
        let answer = accept_viewer(&offer, Some(&h264_params(0x4d401f))).unwrap();
        assert_eq!(offered_h264_profiles(&answer), vec!["4d401f"], "{answer}");
        assert!(answer.contains("a=rtpmap:112 H264/90000"), "{answer}");
        assert!(answer.contains("a=rtpmap:96 VP8/90000"), "other codecs stay negotiable: {answer}");
        // Constrained Baseline from libx264 (42c01e) matches the browser's 42e01f.
        let answer = accept_viewer(&offer, Some(&h264_params(0x42c01e))).unwrap();
        assert_eq!(offered_h264_profiles(&answer), vec!["42c01e"], "{answer}");
        // A VP8 room leaves H.264 as str0m negotiates it.
        let mut vp8 = CodecConfig::empty();
        vp8.enable_vp8(true);
        assert!(offered_h264_profiles(&accept_viewer(&offer, Some(&vp8.params()[0])).unwrap()).len() > 1);
    }

    #[test]
    fn viewer_without_a_compatible_profile_gets_no_h264() {
        let baseline_only: &[(u8, &str, &str)] = &[
            (96, "VP8/90000", ""),
            (102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        ];
        // High profile stream, viewer offers VP8 + Constrained Baseline: the answer keeps VP8 only.
        let answer = accept_viewer(&viewer_offer(baseline_only, true), Some(&h264_params(0x640028))).unwrap();
        assert!(offered_h264_profiles(&answer).is_empty(), "{answer}");
        assert!(answer.contains("VP8/90000"), "{answer}");
        // Only H.264 video, nothing else usable: refused with the reason.
        let err = accept_viewer(&viewer_offer(&baseline_only[1..], false), Some(&h264_params(0x640028))).unwrap_err();
        assert!(matches!(err, SessionError::IncompatibleH264 { stream: 0x640028 }), "{err}");
        assert!(err.to_string().contains("640028"), "{err}");
    }

    #[test]
    fn transport_cc_only_for_viewers_with_bandwidth_estimation() {
        let offer = viewer_offer(&[(96, "VP8/90000", "")], true).replace(
            "a=rtpmap:96 VP8/90000\r\n",
            "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 goog-remb\r\n\
             a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
        );
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let accept = |bwe| WebRtcSession::accept(Role::Viewer, &offer, &[addr], None, ViewerOptions { bwe, ..Default::default() }, None, Instant::now()).unwrap().1;
        let plain = accept(false);
        assert!(!plain.contains("transport-cc") && !plain.contains("transport-wide-cc"), "{plain}");
        assert!(plain.contains("goog-remb"), "REMB stays: {plain}");
        let bwe = accept(true);
        assert!(bwe.contains("a=rtcp-fb:96 transport-cc") && bwe.contains("transport-wide-cc"), "{bwe}");
    }

    #[test]
    fn rejected_first_section_keeps_no_candidates() {
        // Chromium offering only Main-profile H.264 for a Constrained Baseline room: video rejected, audio
        // accepted; the candidate must be in the (bundled) audio section or the viewer never connects.
        let only_main: &[(u8, &str, &str)] =
            &[(102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f")];
        let answer = accept_viewer(&viewer_offer(only_main, true), Some(&h264_params(0x42e01f))).unwrap();
        let (video, audio) = answer.split_once("m=audio").unwrap();
        assert!(video.contains("m=video 0 ") && !video.contains("a=candidate:"), "{answer}");
        assert!(audio.contains("a=candidate:") && !audio.contains("a=group:BUNDLE"), "{answer}");
        assert_eq!(first_accepted_section(&answer).map(|(_, mid)| mid), Some("1".to_string()));
        // Nothing to move: unchanged.
        let ok = accept_viewer(&viewer_offer(BROWSER_H264, true), None).unwrap();
        assert_eq!(answer_with_candidates_in_bundle(&ok), ok);
        assert_eq!(first_accepted_section(&ok).map(|(_, mid)| mid), Some("0".to_string()));
    }

    #[test]
    fn garbage_offer_is_bad_sdp() {
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let err = WebRtcSession::accept(Role::Publisher, "hello", &[addr], None, ViewerOptions::default(), None, Instant::now()).err().unwrap();
        assert!(matches!(err, SessionError::BadSdp(_)), "{err}");
    }
}
