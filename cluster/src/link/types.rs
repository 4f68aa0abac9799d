//! The link endpoint's public vocabulary: configuration, identifiers, events, errors.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quinn_proto::VarInt;

use crate::node::{Hello, NodeId};
use crate::wire::{ControlMsg, WireError};

/// One connection (link or link attempt) of this endpoint. Never reused within a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Application close codes on links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close (`close`, `shutdown`).
    Normal = 0,
    /// The peer's proof of the cluster secret was wrong.
    AuthFailed = 0x5301,
    /// The peer did not prove the secret in time.
    AuthTimeout = 0x5302,
    /// Malformed frame or misuse of streams.
    Protocol = 0x5303,
    /// Another link to the same node was kept.
    Duplicate = 0x5304,
    /// We dialed ourselves.
    SelfLink = 0x5305,
}

impl CloseCode {
    pub fn from_code(code: u64) -> Option<Self> {
        [
            Self::Normal,
            Self::AuthFailed,
            Self::AuthTimeout,
            Self::Protocol,
            Self::Duplicate,
            Self::SelfLink,
        ]
        .into_iter()
        .find(|c| *c as u64 == code)
    }

    pub(super) fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }
}

/// Settings of a [`LinkEndpoint`](super::LinkEndpoint).
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The cluster secret (the same one that signs tokens).
    pub secret: Vec<u8>,
    /// What we tell peers about ourselves.
    pub hello: Hello,
    /// A peer silent this long is down (QUIC idle timeout, counted from the last keep-alive, so a dead
    /// peer is reported between `idle_timeout` and `idle_timeout + keep_alive`). Default 2.5 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval; keep it well under `idle_timeout`. Default 500 ms.
    pub keep_alive: Duration,
    /// Time allowed between TLS handshake completion and the peer's proof. Default 5 s.
    pub auth_timeout: Duration,
    /// First redial delay. Default 250 ms.
    pub backoff_initial: Duration,
    /// Longest redial delay. Default 8 s.
    pub backoff_max: Duration,
    /// QUIC datagram send/receive buffer per link, bytes. Default 1 MiB.
    pub datagram_buffer: usize,
    /// Control bytes queued per link before `send_control` refuses. Default 4 MiB.
    pub max_pending_control: usize,
    /// Most concurrent connections (links plus attempts). Default 512.
    pub max_connections: usize,
    /// QUIC path MTU discovery (needs a socket that never fragments: IP_PMTUDISC_DO). Default true.
    pub mtu_discovery: bool,
}

impl LinkConfig {
    pub fn new(secret: impl Into<Vec<u8>>, hello: Hello) -> Self {
        Self {
            secret: secret.into(),
            hello,
            idle_timeout: Duration::from_millis(2500),
            keep_alive: Duration::from_millis(500),
            auth_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            datagram_buffer: 1 << 20,
            max_pending_control: 4 << 20,
            max_connections: 512,
            mtu_discovery: true,
        }
    }
}

/// Errors of link operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("bad link configuration: {0}")]
    Config(&'static str),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn_proto::ConnectError),
    #[error("no such link {0}")]
    UnknownPeer(PeerId),
    #[error("link {0} is not up")]
    NotUp(PeerId),
    #[error("link {peer} has {pending} control bytes queued; refusing more")]
    Backpressure { peer: PeerId, pending: usize },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Why a datagram was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("no such link")]
    UnknownPeer,
    #[error("link is not up")]
    NotUp,
    #[error("datagram of {len} bytes exceeds the link's limit ({max:?})")]
    TooLarge { len: usize, max: Option<usize> },
    #[error("the peer does not accept datagrams")]
    Unsupported,
}

/// Why an authenticated link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// Nothing heard for the idle timeout.
    TimedOut,
    /// The peer closed it (code: a [`CloseCode`] if it is one of ours).
    ClosedByPeer { code: u64, reason: String },
    /// We closed it.
    Closed(CloseCode),
    /// The peer answered with a stateless reset (it restarted and lost the connection).
    Reset,
    /// QUIC-level failure.
    Transport(String),
}

/// Why a connection never became a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// The peer's proof does not match our secret.
    BadProof,
    /// The peer closed the connection because our proof did not match its secret.
    RejectedByPeer,
    /// No proof within `auth_timeout`.
    Timeout,
    /// The first frame was not a valid auth frame.
    Malformed(String),
}

/// What the link endpoint reports.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A link authenticated; `peer` is usable for control and datagrams.
    Up {
        peer: PeerId,
        node_id: NodeId,
        hello: Hello,
        addr: SocketAddr,
    },
    /// A control message from an authenticated peer.
    Control { peer: PeerId, msg: ControlMsg },
    /// A datagram from an authenticated peer.
    Datagram { peer: PeerId, bytes: Bytes },
    /// A link that was `Up` ended.
    Down {
        peer: PeerId,
        node_id: NodeId,
        reason: DownReason,
    },
    /// A connection failed authentication (either side refused); it never was `Up`.
    AuthFailed {
        addr: SocketAddr,
        node_id: Option<NodeId>,
        reason: AuthFailure,
    },
}

/// One UDP datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub bytes: Bytes,
}
