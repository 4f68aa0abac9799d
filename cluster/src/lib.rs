//! sfumato's cluster plumbing, sans-IO: authenticated QUIC links between nodes ([`link`]) and gossip
//! membership ([`membership`]).
//!
//! Like `media`, nothing here owns a socket or reads a clock. Every input takes `now`; outputs are polled
//! (`poll_transmit`, `poll_event`/`poll_output`, `poll_timeout`). The node's IO shell — one glommio UDP
//! socket for `--quic-port` — feeds datagrams and timeouts in and sends what comes out, which keeps every
//! state machine testable with an in-memory network and a fake clock.
//!
//! How the pieces fit:
//! - [`LinkEndpoint`] keeps QUIC connections to other nodes, proves the cluster secret on each
//!   ([`auth`]), and carries [`ControlMsg`]s (reliable stream) and datagrams (RTP).
//! - [`Membership`] decides who is in the cluster from gossip carried as [`ControlMsg::Gossip`]; it asks
//!   the shell to link to addresses it learns ([`MembershipOutput::Connect`]).

//!
//! # Driving it from a shell (one glommio UDP socket on `--quic-port`)
//!
//! ```text
//! link = LinkEndpoint::new(now, LinkConfig::new(secret, info.hello()))
//! mem  = Membership::new(info, seeds);  mem.handle_timeout(now)
//! loop {
//!     select { datagram (from, BytesMut) => link.handle_datagram(now, from, bytes),
//!              sleep until min(link.poll_timeout(), mem.poll_timeout()) => link/mem.handle_timeout(now) }
//!     glue:  mem.poll_output():  Send{to,msg}   -> link.send_control(link.peer_of(&to)?, &ControlMsg::Gossip(msg))
//!                                Connect(a)     -> link.keep_linked(now, a);   Disconnect(a) -> link.forget(a)
//!                                Event(e)       -> cascading / gateway / events bus
//!            link.poll_event():  Up{node_id,..} -> mem.handle_link_up(now, &node_id)
//!                                Control{peer, Gossip(g)} -> mem.handle_message(now, &node_of(peer), g)
//!                                Control{..other} / Datagram{..} -> cascading; Down / AuthFailed -> metrics
//!     while let Some(t) = link.poll_transmit() { socket.send_to(&t.bytes, t.dest) }   // batch with sendmmsg
//! }
//! ```
//! Repeat the glue until both sides are quiet. `tests/cluster.rs` is exactly this loop over an in-memory
//! network. Set `IP_PMTUDISC_DO` on the socket (or turn off `LinkConfig::mtu_discovery`).

pub mod auth;
pub mod dialer;
mod frame;
pub mod gossip;
pub mod link;
pub mod membership;
pub mod node;
mod rng;
mod tls;
pub mod wire;

pub use auth::{AuthError, ClusterSecret, Role};
pub use dialer::{Backoff, Dialer, TargetState};
pub use gossip::{GossipEntry, GossipMsg, NodeData};
pub use link::{
    AuthFailure, CloseCode, DatagramError, DownReason, LinkConfig, LinkEndpoint, LinkError,
    LinkEvent, PeerId, Transmit,
};
pub use membership::{
    Member, MemberStatus, Membership, MembershipConfig, MembershipEvent, MembershipOutput,
};
pub use node::{
    CarriedRoom, CarriedRooms, Hello, InvalidNodeId, Load, NodeAddrs, NodeId, NodeInfo, TrackKind, TrackKinds,
};
pub use tls::ALPN;
pub use wire::{
    decode_control, BitrateHint, ControlFrame, ControlMsg, KeyframeRequest, SignalKind, SignalReply,
    SignalRequest, Subscribe, Unsubscribe, WireError,
};
