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
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};

use crate::packet::{Codec, ForwardedPacket, TrackKind};
use crate::seq_rewrite::{SeqRewriter, Skip};

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
    #[error("no usable host candidate: {0}")]
    Candidate(String),
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
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
}

/// Why a forwarded packet was not written to a viewer (counted by the caller, never an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSkip {
    NotConnected,
    NoTrackOfKind,
    CodecNotNegotiated,
    Rewrite(Skip),
}

struct ViewerTrack {
    mid: Mid,
    kind: TrackKind,
    rewriter: SeqRewriter,
    /// Last publisher payload type and the viewer PT it maps to (None = not negotiated).
    pt_map: Option<(u8, u64, Option<PayloadParams>)>,
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
    last_keyframe_request: Option<Instant>,
    /// A keyframe arrived since the last request (the request is answered).
    keyframe_since_request: bool,
    keyframe_wanted: bool,
    /// Viewer: when it last asked its publisher for a keyframe.
    last_keyframe_ask: Option<Instant>,
    /// Viewer: one outgoing track per kind.
    viewer_tracks: Vec<ViewerTrack>,
}

/// Builds the Rtc configuration shared by both roles.
fn new_rtc(now: Instant, cert: Option<DtlsCert>) -> Rtc {
    let mut cfg = Rtc::builder().set_rtp_mode(true).set_ice_lite(true);
    if let Some(cert) = cert {
        cfg = cfg.set_dtls_cert(cert);
    }
    cfg.build(now)
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
    pub fn accept(
        role: Role,
        offer_sdp: &str,
        candidates: &[SocketAddr],
        cert: Option<DtlsCert>,
        now: Instant,
    ) -> Result<(Self, String), SessionError> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SessionError::BadSdp(e.to_string()))?;
        let mut rtc = new_rtc(now, cert);
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
        if usable.is_empty() {
            return Err(SessionError::NoUsableMedia(match role {
                Role::Publisher => "a WHIP offer needs a sendonly/sendrecv audio or video section with Opus, VP8, VP9, H264 or AV1",
                Role::Viewer => "a WHEP offer needs a recvonly/sendrecv audio or video section with Opus, VP8, VP9, H264 or AV1",
            }));
        }
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let mut session = WebRtcSession {
            rtc,
            role,
            local_ufrag,
            created_at: now,
            connected: false,
            next_timeout: now,
            source: 0,
            publisher_mids: Vec::new(),
            last_keyframe_request: None,
            keyframe_since_request: false,
            keyframe_wanted: false,
            last_keyframe_ask: None,
            viewer_tracks: Vec::new(),
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
                    })
                    .collect()
            }
        }
        Ok((session, answer.to_sdp_string()))
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
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
        self.next_timeout
    }

    pub fn set_source(&mut self, source: u64) {
        self.source = source;
    }

    /// Feeds one datagram received on `local` from `remote`. Errors are per-packet (garbage from the peer's
    /// address) and don't end the session; call [`poll`](Self::poll) afterwards.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, local: SocketAddr, buf: &[u8]) -> bool {
        let Ok(recv) = Receive::new(Protocol::Udp, remote, local, buf) else { return false };
        match self.rtc.handle_input(Input::Receive(now, recv)) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "datagram rejected by session");
                false
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "timeout handling failed; closing session");
            self.rtc.disconnect();
        }
    }

    /// Ends the session now.
    pub fn close(&mut self) {
        self.rtc.disconnect();
    }

    /// Drains str0m's output into `out` until it asks for a timeout. Must follow every input or write.
    ///
    /// A timeout that is already due is handled right here: str0m's pacer only releases packets written with
    /// `write_rtp` after a timeout, so without this a forwarded packet would wait for the next timer tick.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<SessionEvent>) {
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
                        self.handle_timeout(now);
                        continue;
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => {
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
                let keyframe_start = crate::keyframe::is_keyframe_start(codec, &pkt.payload);
                if keyframe_start {
                    self.keyframe_wanted = false;
                    self.keyframe_since_request = true;
                }
                out.push(SessionEvent::Rtp(ForwardedPacket {
                    codec,
                    params,
                    source: self.source,
                    seq: *pkt.seq_no,
                    timestamp: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    keyframe_start,
                    clock_rate: params.spec().clock_rate.get(),
                    received_at: pkt.timestamp,
                    payload: pkt.payload,
                }));
            }
            Event::KeyframeRequest(_) if self.role == Role::Viewer => out.push(SessionEvent::KeyframeRequested),
            _ => {}
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
        let mids: Vec<Mid> =
            self.publisher_mids.iter().filter(|(_, k)| *k == TrackKind::Video).map(|(m, _)| *m).collect();
        let mut api = self.rtc.direct_api();
        for mid in mids {
            if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                sent = true;
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
        let mid = track.mid;
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else { return Err(WriteSkip::NoTrackOfKind) };
        let write = RtpWrite::new(out_params.pt(), SeqNo::from(rw.seq), rw.timestamp, pkt.received_at, pkt.payload.clone())
            .marker(pkt.marker)
            .ext_vals(ExtensionValues::default())
            .nackable(kind == TrackKind::Video);
        tx.write_rtp(write);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mids_from_offer_text() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(offered_mids(sdp), vec![("0".into(), TrackKind::Audio), ("1".into(), TrackKind::Video)]);
    }

    #[test]
    fn garbage_offer_is_bad_sdp() {
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let err = WebRtcSession::accept(Role::Publisher, "hello", &[addr], None, Instant::now()).err().unwrap();
        assert!(matches!(err, SessionError::BadSdp(_)), "{err}");
    }
}
