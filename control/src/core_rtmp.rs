//! What a room's home core does for RTMP beyond registering the external publisher (`core_cluster.rs`):
//!
//! - **Instant start.** An RTMP encoder can't be asked for a keyframe, so the home core keeps the room's
//!   current GOP ([`GopCache`]) and, when a viewer connects, replays it to that one viewer — directly if the
//!   viewer lives here, else as one [`MediaMsg::GopReplay`] on the media ring to the viewer's core. The ring
//!   is FIFO and the cache is filled before each packet is fanned out, so every live packet the viewer gets
//!   after the replay is newer than the replayed ones: no gap, no duplicate.
//! - **Replacing a publisher** (`--rtmp-replace`): a publish on a key that is live takes over; the old
//!   connection's core is told ([`ControlMsg::RtmpReplaced`]) and that connection closes.
//! - `track.started` / `track.stopped` events for RTMP publishers.
//!
//! A child module of `core_state` (it uses `CoreState`'s private fields), so the single-node WebRTC paths
//! stay free of RTMP details.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use sfumato_media::gop_cache::{GopCache, GopLimits, Pushed};
use sfumato_media::packet::{ForwardedPacket, TrackKind};
use sfumato_media::room::{RoomKey, SessionId};

use super::{CoreState, ExternalKind};
use crate::events::{now_ms, EventRecord};
use crate::messages::{ControlMsg, MediaMsg, OfferError};

/// Bound on replaced-publisher notices waiting for their connection (they are taken within one read).
const MAX_REPLACED_NOTICES: usize = 1024;
const KINDS: [&str; 2] = ["audio", "video"];

/// RTMP bookkeeping of one core: rooms homed here with an RTMP publisher, and notices for connections here.
#[derive(Default)]
pub struct CoreRtmp {
    /// `--rtmp-replace`: a new publisher on a live key takes over instead of being refused.
    pub replace: bool,
    /// `--rtmp-gop-cache`: each RTMP room's GOP cache bounds.
    pub gop_limits: GopLimits,
    rooms: HashMap<RoomKey, RtmpRoom>,
    /// Connections on this core whose publish was taken over: (room, source).
    replaced: HashSet<(RoomKey, u64)>,
}

struct RtmpRoom {
    name: String,
    source: u64,
    /// The core the RTMP connection lives on.
    conn_core: usize,
    gop: GopCache,
    /// audio, video: RTP seen (track.started emitted).
    tracks_started: [bool; 2],
}

impl CoreState {
    pub fn set_rtmp_replace(&mut self, replace: bool) {
        self.rtmp_state.replace = replace;
    }

    pub fn set_rtmp_gop_cache(&mut self, bytes: usize) {
        self.rtmp_state.gop_limits = GopLimits::from_bytes(bytes);
    }

    /// Registers an RTMP publisher of `room` (homed here) whose connection lives on `conn_core`. With
    /// `--rtmp-replace`, a live RTMP publisher of the room is unregistered first and its connection told.
    pub fn rtmp_publish_from(&mut self, room: &str, conn_core: usize, now: Instant) -> Result<u64, OfferError> {
        let key = RoomKey::of(room);
        if self.rtmp_state.replace && key.home_core(self.cores) == self.core {
            let current = self.router.publisher(key).map(|(_, source)| source);
            if let Some(old) = self.rtmp_state.rooms.get(&key).filter(|r| Some(r.source) == current) {
                let (old_source, old_core) = (old.source, old.conn_core);
                tracing::info!(
                    core = self.core,
                    room,
                    old_source,
                    old_core,
                    reason = "replaced by a new publisher (--rtmp-replace)",
                    "RTMP publisher replaced"
                );
                self.stats.rtmp_replaced += 1;
                self.rtmp_publish_stop(key, old_source);
                self.send_control(old_core, ControlMsg::RtmpReplaced { room: key, source: old_source }, now);
            }
        }
        let source = self.external_publish_start(room, ExternalKind::Rtmp)?;
        let entry = RtmpRoom {
            name: room.to_string(),
            source,
            conn_core,
            gop: GopCache::new(self.rtmp_state.gop_limits),
            tracks_started: [false; 2],
        };
        self.rtmp_state.rooms.insert(key, entry);
        Ok(source)
    }

    /// Sees every packet of an RTMP publisher before it is fanned out: GOP cache, track.started.
    pub(super) fn rtmp_observe(&mut self, room: RoomKey, packet: &ForwardedPacket) {
        let Some(r) = self.rtmp_state.rooms.get_mut(&room) else { return };
        if r.source != packet.source {
            return; // a late packet of a publisher that is gone
        }
        if r.gop.push(packet) == Pushed::Overflowed {
            self.stats.rtmp_gop_overflows += 1;
            tracing::debug!(core = self.core, room = %r.name, "GOP larger than the cache; not cached until the next keyframe");
        }
        let k = (packet.kind() == TrackKind::Video) as usize;
        if !r.tracks_started[k] {
            r.tracks_started[k] = true;
            let data = serde_json::json!({
                "kind": KINDS[k],
                "codec": format!("{:?}", packet.codec),
                "transport": "rtmp",
            });
            let name = r.name.clone();
            self.emit_rtmp_track(room, &name, "track.started", data);
        }
    }

    /// The RTMP publisher `source` of `room` is going away: track.stopped, cache dropped.
    pub(super) fn rtmp_forget(&mut self, room: RoomKey, source: u64) {
        if self.rtmp_state.rooms.get(&room).is_none_or(|r| r.source != source) {
            return;
        }
        let Some(r) = self.rtmp_state.rooms.remove(&room) else { return };
        for (i, kind) in KINDS.iter().enumerate() {
            if r.tracks_started[i] {
                let data = serde_json::json!({ "kind": kind, "transport": "rtmp" });
                self.emit_rtmp_track(room, &r.name, "track.stopped", data);
            }
        }
    }

    /// On the home core: viewer `viewer` of `room` just connected; send it the cached GOP, if any.
    pub(super) fn gop_replay_request(&mut self, room: RoomKey, viewer: SessionId, now: Instant) {
        let Some(r) = self.rtmp_state.rooms.get(&room) else { return };
        if r.gop.is_empty() {
            return;
        }
        let packets = r.gop.replay(now);
        self.stats.rtmp_gop_replays += 1;
        tracing::debug!(core = self.core, room = %r.name, viewer = viewer.0, packets = packets.len(), bytes = r.gop.bytes(), "GOP replay");
        let core = viewer.core();
        if core == self.core {
            self.gop_replay_local(room, viewer, packets, now);
        } else if core < self.cores {
            self.media_out.push((core, MediaMsg::GopReplay { room, viewer, packets }));
        }
    }

    /// On the viewer's core: writes a replayed GOP to that one viewer, unless its video already started on
    /// the same source (a natural keyframe got there first: the replay would duplicate it).
    pub(super) fn gop_replay_local(&mut self, room: RoomKey, viewer: SessionId, packets: Vec<ForwardedPacket>, now: Instant) {
        let Some(first) = packets.first() else { return };
        let Some(entry) = self.sessions.get_mut(&viewer) else { return };
        if entry.room != room || entry.session.forwarding_source(TrackKind::Video) == Some(first.source) {
            return;
        }
        let (mut written, mut skipped, mut bytes) = (0u64, 0u64, 0u64);
        for p in &packets {
            match entry.session.write_forwarded(p, now) {
                Ok(()) => {
                    written += 1;
                    bytes += p.payload.len() as u64;
                    entry.packets += 1;
                    entry.bytes += p.payload.len() as u64;
                }
                Err(_) => skipped += 1,
            }
        }
        if written > 0 && entry.written_since.is_none() {
            // Measured from the replay (the packets are old by design): `forward_latency_us`, not RTMP's.
            entry.written_since = Some(now);
            entry.written_rtmp = false;
            self.written.push(viewer);
        }
        self.stats.rtp_packets_forwarded += written;
        self.stats.rtp_bytes_forwarded += bytes;
        self.stats.rtp_packets_skipped += skipped;
        self.stats.rtmp_gop_replay_packets += written;
        tracing::debug!(core = self.core, viewer = viewer.0, written, skipped, "GOP replayed to viewer");
    }

    /// On a connection's core: the home core replaced the publisher `source` of `room`.
    pub(super) fn rtmp_mark_replaced(&mut self, room: RoomKey, source: u64) {
        if self.rtmp_state.replaced.len() >= MAX_REPLACED_NOTICES {
            self.rtmp_state.replaced.clear();
        }
        self.rtmp_state.replaced.insert((room, source));
    }

    /// For an RTMP connection of this core: true (once) if its publish was taken over by another one.
    pub fn rtmp_take_replaced(&mut self, room: RoomKey, source: u64) -> bool {
        self.rtmp_state.replaced.remove(&(room, source))
    }

    fn emit_rtmp_track(&self, room: RoomKey, name: &str, kind: &'static str, data: serde_json::Value) {
        if !self.events.is_enabled() {
            return;
        }
        let session = self.router.publisher(room).map(|(id, _)| format!("{:016x}", id.0));
        self.events.emit(EventRecord {
            kind,
            node: self.events.node.to_string(),
            room: name.to_string(),
            peer: None,
            session,
            ts_ms: now_ms(),
            data,
        });
    }
}
