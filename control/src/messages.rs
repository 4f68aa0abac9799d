//! Messages cores exchange over the engine's rings.
//!
//! Two meshes: [`ControlMsg`] (signalling, room directory, stats — never dropped: sent with back-pressure)
//! and [`MediaMsg`] (forwarded RTP — a full ring drops and counts, never blocks the sender).

use sfumato_media::packet::{ForwardedPacket, PayloadParams};
use sfumato_media::room::{RoomKey, SessionId};
use sfumato_media::webrtc::Role;

use crate::stats::CoreStats;

/// A WHIP/WHEP resource, as handed to the client in `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceId {
    pub session: SessionId,
    /// Random, so resource URLs can't be guessed from the session counter.
    pub nonce: u64,
}

impl ResourceId {
    pub fn to_path_segment(self) -> String {
        format!("{:016x}{:016x}", self.session.0, self.nonce)
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let session = u64::from_str_radix(&s[..16], 16).ok()?;
        let nonce = u64::from_str_radix(&s[16..], 16).ok()?;
        Some(Self { session: SessionId(session), nonce })
    }
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferError {
    /// 400: bad SDP or no usable media.
    BadOffer(String),
    /// 409: the room already has a publisher.
    RoomBusy,
    /// 503: the server can't take it (core gone, internal failure).
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Created {
    pub resource: ResourceId,
    pub answer: String,
}

/// What to do with an existing resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceOp {
    /// DELETE: end the session.
    Delete,
    /// PATCH (trickle ICE, RFC 9725 §4.3): an `application/trickle-ice-sdpfrag` body with candidates, or
    /// with new ICE credentials (ICE restart). `if_match` is the request's If-Match value, if any.
    Patch { fragment: String, if_match: Option<String> },
}

/// Outcome of a DELETE/PATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceOutcome {
    Done,
    /// ICE restarted: the server's answer fragment and the resource's new ETag (without quotes).
    IceRestarted { fragment: String, etag: String },
    /// If-Match named another ETag than the resource's current one.
    PreconditionFailed,
    /// The PATCH body can't be used.
    BadFragment(String),
    NotFound,
    /// The resource was created with a token and the request didn't present the same one.
    Forbidden,
}

/// A new session's request, as it travels to the owning core.
#[derive(Debug, Clone)]
pub struct OfferRequest {
    pub role: Role,
    pub room: String,
    pub sdp: String,
    /// Fingerprint of the token that created it (secure mode): DELETE/PATCH must present the same token.
    pub owner: Option<u64>,
    /// Peer name from the token, for events.
    pub peer: Option<String>,
}

pub enum ControlMsg {
    /// Create a session. `room_video`: a viewer's room's current video format, from the room's home core
    /// (the viewer's answer names it, `WebRtcSession::accept`).
    Offer { reply_to: usize, req: u64, offer: OfferRequest, room_video: Option<PayloadParams> },
    OfferDone { req: u64, result: Result<Created, OfferError> },
    Resource { reply_to: usize, req: u64, id: ResourceId, op: ResourceOp, presented: Option<u64> },
    ResourceDone { req: u64, outcome: ResourceOutcome },
    /// To a room's home core: `core` has viewers of the room now.
    ViewerCoreJoined { room: RoomKey, name: String, core: usize },
    /// To a room's home core: `core` has no viewers of the room anymore.
    ViewerCoreLeft { room: RoomKey, core: usize },
    /// To a room's home core: a viewer needs a keyframe.
    KeyframeRequest { room: RoomKey },
    /// To a room's home core: the lowest bandwidth estimate (bits/s) of `core`'s viewers of the room
    /// (at most once per second per room, `bitrate.rs`).
    BitrateHint { room: RoomKey, bps: u64, core: usize },
    /// To a room's home core: which video format does the room carry now?
    RoomVideo { reply_to: usize, req: u64, room: RoomKey },
    RoomVideoDone { req: u64, video: Option<PayloadParams> },
    StatsRequest { reply_to: usize, req: u64 },
    StatsDone { req: u64, stats: CoreStats },
    /// To a room's home core: an RTMP connection wants to publish `room`; the reply carries the source id.
    RtmpPublish { reply_to: usize, req: u64, room: String },
    RtmpPublishDone { req: u64, result: Result<u64, OfferError> },
    /// To a room's home core: the RTMP publisher with this source id is gone.
    RtmpUnpublish { room: RoomKey, source: u64 },
    /// To a room's home core: `viewer` just connected; send it the room's cached GOP (RTMP rooms).
    GopReplay { room: RoomKey, viewer: SessionId },
    /// To an RTMP connection's core (`--rtmp-replace`): another publisher took over `room` from `source`.
    RtmpReplaced { room: RoomKey, source: u64 },
}

pub enum MediaMsg {
    /// From a room's home core to another core with viewers of it: deliver locally. `rtmp`: the packet comes
    /// from an RTMP publisher (its latency goes to `rtmp_forward_latency_us`, not `forward_latency_us`).
    Forward { room: RoomKey, packet: ForwardedPacket, rtmp: bool },
    /// A packet of a room's RTMP publisher, from the RTMP connection's core to the room's home core, which
    /// fans it out.
    RtmpPacket { room: RoomKey, packet: ForwardedPacket },
    /// To a viewer's core: the cached GOP of an RTMP room (oldest first), for that one viewer only.
    GopReplay { room: RoomKey, viewer: SessionId, packets: Vec<ForwardedPacket> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_id_round_trip_and_rejects_junk() {
        let id = ResourceId { session: SessionId::new(1, 77), nonce: 0xdead_beef_0123_4567 };
        assert_eq!(ResourceId::parse(&id.to_path_segment()), Some(id));
        assert_eq!(ResourceId::parse("xyz"), None);
        assert_eq!(ResourceId::parse(&"g".repeat(32)), None);
        assert_eq!(ResourceId::parse(&"0".repeat(33)), None);
    }
}
