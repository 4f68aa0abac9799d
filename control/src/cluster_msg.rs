//! Messages between a node's cores and its cluster core (core 0, which owns the QUIC socket).
//!
//! They travel on two rings of their own, next to the core meshes of `messages.rs`: [`ClusterCtl`]
//! (room states, cascading instructions, proxied signalling — sent with back-pressure, never dropped) and
//! [`ClusterMedia`] (packets to and from the cluster — `try_send`, a full ring is a counted drop). Keeping
//! them apart keeps the cluster out of the single-node message types.

use sfumato_cluster::{NodeId, SignalReply, SignalRequest};
use sfumato_media::packet::ForwardedPacket;
use sfumato_media::room::RoomKey;

pub enum ClusterCtl {
    /// Home core → core 0: whether the room has a publisher here, whether it has viewers here but no
    /// local publisher (its media must come from another node), and its video's H.264 `profile-level-id`
    /// (if its video is H.264; gossiped for viewers joining on other nodes).
    RoomState { room: RoomKey, name: String, local_publisher: bool, wants_remote: bool, h264: Option<u32> },
    /// Home core → core 0: a viewer of a cascaded room needs a keyframe.
    KeyframeUp { room: RoomKey },
    /// Home core → core 0: the lowest bandwidth estimate (bits/s) of a cascaded room's viewers (and of the
    /// nodes subscribed to us for it), to send upstream.
    BitrateUp { room: RoomKey, bps: u64 },
    /// Core 0 → home core: a node subscribed to the room reports its lowest bandwidth estimate.
    Bitrate { room: RoomKey, bps: u64, from: NodeId },
    /// Core 0 → home core: register the cluster as the room's publisher (media from node `from`).
    IngestStart { room: RoomKey, name: String, from: NodeId },
    /// Core 0 → home core: the cascaded publisher is gone.
    IngestStop { room: RoomKey },
    /// Core 0 → home core: send the room's packets to core 0 (another node subscribed).
    ExportStart { room: RoomKey, name: String },
    /// Core 0 → home core: no node subscribes anymore.
    ExportStop { room: RoomKey },
    /// Core 0 → home core: a subscribing node's viewer needs a keyframe.
    Keyframe { room: RoomKey },
    /// Any core → core 0: proxy a signalling request to node `to`; the reply comes back as `SignalDone`.
    Signal { reply_to: usize, req: u64, to: NodeId, request: SignalRequest },
    /// Core 0 → the core whose HTTP handler waits.
    SignalDone { req: u64, reply: Result<SignalReply, String> },
}

pub enum ClusterMedia {
    /// Home core → core 0: one packet of an exported room, to send once per subscribing node.
    Cascade { room: RoomKey, packet: ForwardedPacket },
    /// Core 0 → home core: one packet of a cascaded room, from the node hosting its publisher.
    Ingest { room: RoomKey, packet: ForwardedPacket },
}
