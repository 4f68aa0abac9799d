//! QUIC links between nodes, as a sans-IO state machine around one `quinn_proto::Endpoint`.
//!
//! The shell owns a UDP socket and a clock; it feeds [`LinkEndpoint::handle_datagram`] /
//! [`LinkEndpoint::handle_timeout`], then drains [`LinkEndpoint::poll_transmit`] (send each to its `dest`),
//! [`LinkEndpoint::poll_event`], and sleeps until [`LinkEndpoint::poll_timeout`].
//!
//! A link is usable only after both sides proved the cluster secret ([`crate::auth`]): each side opens one
//! unidirectional stream whose first frame is an [`AuthFrame`](crate::wire::AuthFrame). Until the peer's proof checks out nothing
//! else is processed (datagrams are dropped, frames are not read past the first), and a bad proof closes
//! the connection with [`CloseCode::AuthFailed`]. Afterwards the stream carries length-prefixed
//! [`ControlMsg`] frames (reliable, ordered) and QUIC datagrams carry unreliable payloads (RTP).
//!
//! If two authenticated links to the same node exist (both sides dialed at once, or the peer restarted),
//! both ends keep the same one: the higher incarnation, else the one dialed by the lower node id, else
//! the newer one. The other is closed with [`CloseCode::Duplicate`].

mod conn;
mod handshake;
mod lifecycle;
mod types;

pub use types::{
    AuthFailure, CloseCode, DatagramError, DownReason, LinkConfig, LinkError, LinkEvent, PeerId,
    Transmit,
};

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig,
    SendDatagramError,
};
use tracing::{debug, trace, warn};

use crate::auth::{ClusterSecret, Role};
use crate::dialer::Dialer;
use crate::frame::FrameDecoder;
use crate::node::{Hello, NodeId};
use crate::tls;
use crate::wire::{ControlFrame, ControlMsg, MAX_FRAME_LEN};
use conn::{Conn, FlushError, Phase};

/// Authenticated QUIC links to other nodes; see the module docs.
pub struct LinkEndpoint {
    cfg: LinkConfig,
    secret: ClusterSecret,
    endpoint: Endpoint,
    client_config: ClientConfig,
    conns: HashMap<ConnectionHandle, Conn>,
    by_peer: HashMap<PeerId, ConnectionHandle>,
    next_peer: u64,
    events: VecDeque<LinkEvent>,
    transmits: VecDeque<Transmit>,
    dialer: Dialer,
    self_addrs: HashSet<SocketAddr>,
    scratch: Vec<u8>,
    arena: BytesMut,
    handles: Vec<ConnectionHandle>,
    dropped_unauthenticated: u64,
    now: Instant,
}

const ARENA_BLOCK: usize = 64 * 1024;

impl LinkEndpoint {
    /// Creates the endpoint with a fresh self-signed certificate.
    pub fn new(now: Instant, cfg: LinkConfig) -> Result<Self, LinkError> {
        if cfg.keep_alive >= cfg.idle_timeout {
            return Err(LinkError::Config(
                "keep_alive must be shorter than idle_timeout",
            ));
        }
        let (server_config, client_config) = tls::configs(&cfg)?;
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(server_config),
            cfg.mtu_discovery,
            None,
        );
        Ok(Self {
            secret: ClusterSecret::new(&cfg.secret),
            dialer: Dialer::new(cfg.backoff_initial, cfg.backoff_max),
            cfg,
            endpoint,
            client_config,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            next_peer: 1,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            self_addrs: HashSet::new(),
            scratch: Vec::with_capacity(1500),
            arena: BytesMut::with_capacity(ARENA_BLOCK),
            handles: Vec::new(),
            dropped_unauthenticated: 0,
            now,
        })
    }

    /// Our hello (node id, incarnation, zone, addresses).
    pub fn hello(&self) -> &Hello {
        &self.cfg.hello
    }

    // ---- inputs -------------------------------------------------------------------------------------

    /// A UDP datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: BytesMut) {
        self.now = now;
        self.scratch.clear();
        match self
            .endpoint
            .handle(now, from, None, None, bytes, &mut self.scratch)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(ev);
                    self.drive(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.conns.len() >= self.cfg.max_connections {
                    warn!(addr = %from, max = self.cfg.max_connections, "refusing cluster connection: too many");
                    self.scratch.clear();
                    let t = self.endpoint.refuse(incoming, &mut self.scratch);
                    self.queue_scratch(t.destination, t.size);
                    return;
                }
                self.scratch.clear();
                match self.endpoint.accept(incoming, now, &mut self.scratch, None) {
                    Ok((ch, conn)) => {
                        let id = self.add_conn(ch, conn, Role::Acceptor, None);
                        debug!(peer = %id, addr = %from, "accepted cluster connection");
                        self.drive(ch);
                    }
                    Err(e) => {
                        debug!(addr = %from, error = %e.cause, "rejected incoming cluster connection");
                        if let Some(t) = e.response {
                            self.queue_scratch(t.destination, t.size);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => self.queue_scratch(t.destination, t.size),
            None => {}
        }
    }

    /// Time passed: drives QUIC timers, auth deadlines and redials. Call at `poll_timeout` (or later).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let mut handles = std::mem::take(&mut self.handles);
        handles.clear();
        handles.extend(self.conns.keys().copied());
        for &ch in &handles {
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            c.conn.handle_timeout(now);
            if let Phase::Auth { deadline } = c.phase {
                if deadline <= now {
                    if let Some(mut c) = self.conns.remove(&ch) {
                        self.fail_auth(&mut c, None, AuthFailure::Timeout);
                        self.conns.insert(ch, c);
                    }
                }
            }
            self.drive(ch);
        }
        self.handles = handles;

        for addr in self.dialer.due(now) {
            if self.self_addrs.contains(&addr) {
                self.dialer.forget(addr);
            } else if let Some(peer) = self.up_peer_covering(addr) {
                self.dialer.linked(addr, peer);
            } else if let Err(e) = self.dial(now, addr) {
                warn!(addr = %addr, error = %e, "cluster dial failed to start");
                self.dialer.failed(now, addr);
            }
        }
    }

    /// Dials `addr` once (no redial; see [`Self::keep_linked`]).
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> Result<PeerId, LinkError> {
        self.now = now;
        self.dial(now, addr)
    }

    /// Keeps a link to `addr`: dial now, and again with backoff whenever there is none.
    pub fn keep_linked(&mut self, now: Instant, addr: SocketAddr) {
        self.now = now;
        if self.self_addrs.contains(&addr) || addr == self.cfg.hello.addrs.quic {
            return;
        }
        self.dialer.keep(now, addr);
    }

    /// Stops redialing `addr`; an existing link stays.
    pub fn forget(&mut self, addr: SocketAddr) {
        self.dialer.forget(addr);
    }

    /// Queues a control message (reliable, ordered) on an authenticated link.
    pub fn send_control(&mut self, peer: PeerId, msg: &ControlMsg) -> Result<(), LinkError> {
        let frame = ControlFrame::encode(msg)?;
        self.send_control_frame(peer, &frame)
    }

    /// Like [`Self::send_control`] with a pre-encoded frame (encode once, send to many).
    pub fn send_control_frame(
        &mut self,
        peer: PeerId,
        frame: &ControlFrame,
    ) -> Result<(), LinkError> {
        let ch = *self
            .by_peer
            .get(&peer)
            .ok_or(LinkError::UnknownPeer(peer))?;
        let c = self
            .conns
            .get_mut(&ch)
            .ok_or(LinkError::UnknownPeer(peer))?;
        if c.phase != Phase::Up {
            return Err(LinkError::NotUp(peer));
        }
        if c.pending_bytes + frame.0.len() > self.cfg.max_pending_control {
            return Err(LinkError::Backpressure {
                peer,
                pending: c.pending_bytes,
            });
        }
        c.pending_bytes += frame.0.len();
        c.pending.push_back(frame.0.clone());
        if let Err(FlushError::Stream(e)) = c.flush() {
            self.close_handle(ch, CloseCode::Protocol, &format!("control stream: {e}"));
            return Err(LinkError::NotUp(peer));
        }
        Ok(())
    }

    /// Queues an unreliable datagram (e.g. one RTP packet). When the link's datagram buffer is full the
    /// oldest queued datagrams are dropped, as befits real-time media.
    pub fn send_datagram(&mut self, peer: PeerId, bytes: Bytes) -> Result<(), DatagramError> {
        let ch = *self.by_peer.get(&peer).ok_or(DatagramError::UnknownPeer)?;
        let c = self.conns.get_mut(&ch).ok_or(DatagramError::UnknownPeer)?;
        if c.phase != Phase::Up {
            return Err(DatagramError::NotUp);
        }
        let len = bytes.len();
        c.conn.datagrams().send(bytes, true).map_err(|e| match e {
            SendDatagramError::TooLarge => DatagramError::TooLarge {
                len,
                max: c.conn.datagrams().max_size(),
            },
            SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => {
                DatagramError::Unsupported
            }
            // Not returned when dropping old datagrams is allowed; treat as full.
            SendDatagramError::Blocked(_) => DatagramError::TooLarge { len, max: None },
        })
    }

    /// Largest datagram payload the link currently carries.
    pub fn max_datagram_size(&mut self, peer: PeerId) -> Option<usize> {
        let ch = self.by_peer.get(&peer)?;
        self.conns.get_mut(ch)?.conn.datagrams().max_size()
    }

    /// Closes one link (reported as `Down` with [`DownReason::Closed`] if it was up).
    pub fn close(&mut self, now: Instant, peer: PeerId) {
        self.now = now;
        if let Some(&ch) = self.by_peer.get(&peer) {
            self.close_handle(ch, CloseCode::Normal, "closed");
        }
    }

    /// Closes every link and stops redialing.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        let targets: Vec<SocketAddr> = self.dialer.targets().map(|(a, _)| a).collect();
        for a in targets {
            self.dialer.forget(a);
        }
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            self.close_handle(ch, CloseCode::Normal, "shutdown");
        }
    }

    // ---- outputs ------------------------------------------------------------------------------------

    /// Next datagram to send. Drain after every `handle_*`/`send_*` call.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        for c in self.conns.values_mut() {
            self.scratch.clear();
            if let Some(t) = c.conn.poll_transmit(self.now, 1, &mut self.scratch) {
                let bytes = freeze(&mut self.arena, &self.scratch[..t.size]);
                return Some(Transmit {
                    dest: t.destination,
                    bytes,
                });
            }
        }
        None
    }

    /// Next event for the shell.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut next = self.dialer.poll_timeout();
        for c in self.conns.values_mut() {
            let t = c.conn.poll_timeout();
            let auth = match c.phase {
                Phase::Auth { deadline } => Some(deadline),
                _ => None,
            };
            for x in [t, auth].into_iter().flatten() {
                next = Some(next.map_or(x, |n: Instant| n.min(x)));
            }
        }
        next
    }

    // ---- queries ------------------------------------------------------------------------------------

    /// Authenticated links: (peer, hello).
    pub fn links(&self) -> impl Iterator<Item = (PeerId, &Hello)> + '_ {
        self.conns
            .values()
            .filter(|c| c.phase == Phase::Up)
            .filter_map(|c| Some((c.id, c.hello.as_ref()?)))
    }

    /// The authenticated link to `node`, if any.
    pub fn peer_of(&self, node: &NodeId) -> Option<PeerId> {
        self.conns
            .values()
            .find(|c| c.phase == Phase::Up && c.node_id() == Some(node))
            .map(|c| c.id)
    }

    /// Whether `peer` is an authenticated link.
    pub fn is_up(&self, peer: PeerId) -> bool {
        self.by_peer
            .get(&peer)
            .and_then(|ch| self.conns.get(ch))
            .is_some_and(|c| c.phase == Phase::Up)
    }

    /// Current round-trip estimate of a link.
    pub fn rtt(&self, peer: PeerId) -> Option<Duration> {
        let ch = self.by_peer.get(&peer)?;
        Some(self.conns.get(ch)?.conn.rtt())
    }

    /// Datagrams dropped because they arrived before the peer authenticated.
    pub fn dropped_unauthenticated_datagrams(&self) -> u64 {
        self.dropped_unauthenticated
    }

    /// The redial state of every kept address.
    pub fn dial_targets(
        &self,
    ) -> impl Iterator<Item = (SocketAddr, crate::dialer::TargetState)> + '_ {
        self.dialer.targets()
    }

    // ---- internals ----------------------------------------------------------------------------------

    fn queue_scratch(&mut self, dest: SocketAddr, size: usize) {
        let bytes = freeze(&mut self.arena, &self.scratch[..size]);
        self.transmits.push_back(Transmit { dest, bytes });
    }

    fn add_conn(
        &mut self,
        ch: ConnectionHandle,
        conn: Connection,
        role: Role,
        target: Option<SocketAddr>,
    ) -> PeerId {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        self.by_peer.insert(id, ch);
        self.conns.insert(
            ch,
            Conn {
                id,
                conn,
                role,
                dial_target: target,
                phase: Phase::Handshake,
                hello: None,
                tx: None,
                rx: None,
                decoder: FrameDecoder::new(MAX_FRAME_LEN),
                pending: VecDeque::new(),
                pending_bytes: 0,
            },
        );
        id
    }

    fn dial(&mut self, now: Instant, addr: SocketAddr) -> Result<PeerId, LinkError> {
        let (ch, conn) =
            self.endpoint
                .connect(now, self.client_config.clone(), addr, tls::SERVER_NAME)?;
        let id = self.add_conn(ch, conn, Role::Dialer, Some(addr));
        self.dialer.dialing(addr, id);
        debug!(peer = %id, addr = %addr, "dialing cluster node");
        Ok(id)
    }

    fn up_peer_covering(&self, addr: SocketAddr) -> Option<PeerId> {
        self.conns.values().find(|c| c.covers(addr)).map(|c| c.id)
    }

    /// Runs a connection's pending work with the connection taken out of the map (so handlers may look
    /// at the other connections), and forgets it once QUIC has drained it.
    fn drive(&mut self, ch: ConnectionHandle) {
        let Some(mut c) = self.conns.remove(&ch) else {
            return;
        };
        loop {
            let mut progressed = false;
            while let Some(ev) = c.conn.poll_endpoint_events() {
                progressed = true;
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            while let Some(ev) = c.conn.poll() {
                progressed = true;
                self.on_event(&mut c, ev);
            }
            if !progressed {
                break;
            }
        }
        if c.conn.is_drained() {
            trace!(peer = %c.id, "cluster connection drained");
            self.by_peer.remove(&c.id);
        } else {
            self.conns.insert(ch, c);
        }
    }

    fn close_handle(&mut self, ch: ConnectionHandle, code: CloseCode, reason: &str) {
        if let Some(mut c) = self.conns.remove(&ch) {
            self.close_conn(&mut c, code, reason);
            self.conns.insert(ch, c);
            self.drive(ch);
        }
    }
}

/// Copies one outgoing datagram into the shared arena and hands out a `Bytes` view of it. The arena is
/// one allocation per 64 KiB of traffic, reclaimed when earlier datagrams have been sent and dropped.
fn freeze(arena: &mut BytesMut, data: &[u8]) -> Bytes {
    if arena.capacity() < data.len() {
        arena.reserve(ARENA_BLOCK.max(data.len()));
    }
    arena.extend_from_slice(data);
    arena.split().freeze()
}
