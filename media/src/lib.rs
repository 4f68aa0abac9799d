//! Sans-IO media logic: everything between "a datagram arrived" and "these datagrams must go out", with no
//! sockets and no executor. The control crate's per-core shell feeds it and sends what it returns.
//!
//! - [`webrtc`]: one WebRTC peer (str0m in RTP mode) as publisher or viewer.
//! - [`room`]: room directory on the home core, viewer lists per core.
//! - [`seq_rewrite`]: per-viewer sequence/timestamp continuity across publishers.
//! - [`keyframe`]: keyframe detection per codec.
//! - [`gop_cache`]: the current GOP of an RTMP-fed room, replayed to viewers that join (instant start).
//! - [`stun`]: STUN USERNAME parsing to route first packets to their session.
//! - [`packet`]: the shared forwarded packet.

pub mod datagram_buffers;
pub mod direct_send;
pub mod dtls_keys;
pub mod gop_cache;
pub mod keyframe;
pub mod packet;
pub mod room;
pub mod rtmp;
pub mod seq_rewrite;
pub mod ssrc_lock;
pub mod srtp_send;
pub mod stun;
pub mod webrtc;
