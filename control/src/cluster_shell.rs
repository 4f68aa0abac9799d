//! The cluster's IO shell: core 0 owns the QUIC socket and drives the sans-IO link endpoint, membership
//! and cascade state machines; every core has a [`ClusterPort`] to talk to it.
//!
//! Why one core: links and membership are per node, not per core, and they are light (gossip every 500 ms,
//! control messages, one datagram per cascaded packet per subscribing node). Core 0 runs:
//! - a receive task (one `recv_from`, then `recvmmsg` for the rest of a burst) feeding `LinkEndpoint`;
//! - a pump task: timers, the glue between links, membership and [`Cascade`], sending what they queued
//!   (`sendmmsg`), and delivering instructions to home cores.
//!
//! The packet path, in both directions, never takes a lock: a home core hands an exported room's packet to
//! core 0 on the cluster media ring (`ClusterMedia::Cascade`), core 0 encodes it once
//! (`cascade_wire.rs`) and queues the same bytes on every subscribing node's link; an arriving datagram is
//! decoded on core 0 and handed to the room's home core (`ClusterMedia::Ingest`), which fans it out as the
//! room's external publisher. Signalling proxied for the gateway (WHIP/WHEP POST, PATCH, DELETE) rides the
//! links' control streams as `SignalRequest`/`SignalReply`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future::poll_once;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::UdpSocket;
use sfumato_cluster::{
    ControlMsg as WireMsg, LinkEndpoint, LinkEvent, Load, MemberStatus, Membership, MembershipEvent,
    MembershipOutput, NodeId, PeerId, SignalReply, SignalRequest, Transmit,
};
use sfumato_engine::CoreLinks;
use sfumato_media::packet::ForwardedPacket;
use sfumato_media::room::RoomKey;
use sfumato_net::udp::{send_batch_nonblocking, Outgoing, RecvBatch};

use crate::cascade::{relay, Action, Cascade, Directory};
use crate::cascade_wire;
use crate::cluster_msg::{ClusterCtl, ClusterMedia};
use crate::cluster_view::{ClusterCounters, ClusterShared, ClusterView, CpuMeter, ViewExport, ViewNode, ViewSubscription};
use crate::core_shell::{CoreLoads, CoreShell};
use crate::core_state::CoreState;

/// How long a gateway waits for the owning node's answer.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(8);
/// Load gossip, view snapshot and housekeeping period.
const LOAD_TICK: Duration = Duration::from_millis(500);
/// Longest sleep of the pump when nothing is due.
const MAX_WAIT: Duration = Duration::from_millis(250);

type SignalResult = Result<SignalReply, String>;

// ---------------------------------------------------------------------------------------- port ---

/// One core's end of the cluster: the cluster rings, proxied-signal replies, and (core 0) the node.
pub struct ClusterPort {
    core: usize,
    shell: Rc<CoreShell>,
    ctl: CoreLinks<ClusterCtl>,
    media: CoreLinks<ClusterMedia>,
    pub shared: Arc<ClusterShared>,
    pending: RefCell<HashMap<u64, LocalSender<SignalResult>>>,
    next_req: Cell<u64>,
    node: OnceCell<Rc<ClusterNode>>,
    /// Instructions from core 0's node for this core's own state, applied by their own task so that a
    /// flush never re-enters the node.
    self_tx: LocalSender<ClusterCtl>,
    self_rx: RefCell<Option<LocalReceiver<ClusterCtl>>>,
}

impl ClusterPort {
    pub fn new(
        shell: Rc<CoreShell>,
        ctl: CoreLinks<ClusterCtl>,
        media: CoreLinks<ClusterMedia>,
        shared: Arc<ClusterShared>,
    ) -> Rc<Self> {
        let (self_tx, self_rx) = local_channel::new_unbounded();
        let port = Rc::new(Self {
            core: shell.core(),
            shell: shell.clone(),
            ctl,
            media,
            shared,
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(1),
            node: OnceCell::new(),
            self_tx,
            self_rx: RefCell::new(Some(self_rx)),
        });
        let _ = shell.cluster.set(Rc::downgrade(&port));
        shell.state.borrow_mut().cluster.enabled = true;
        port
    }

    /// Starts the ring tasks.
    pub fn start(
        self: &Rc<Self>,
        ctl_rx: Vec<(usize, ConnectedReceiver<ClusterCtl>)>,
        media_rx: Vec<(usize, ConnectedReceiver<ClusterMedia>)>,
    ) {
        for (_, rx) in ctl_rx {
            let me = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    me.handle_ctl(msg).await;
                }
            })
            .detach();
        }
        for (_, rx) in media_rx {
            let me = self.clone();
            glommio::spawn_local(async move { me.media_loop(rx).await }).detach();
        }
        if let Some(rx) = self.self_rx.borrow_mut().take() {
            let me = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    me.handle_ctl(msg).await;
                }
            })
            .detach();
        }
    }

    async fn handle_ctl(&self, msg: ClusterCtl) {
        match msg {
            ClusterCtl::SignalDone { req, reply } => self.complete(req, reply),
            msg @ (ClusterCtl::RoomState { .. }
            | ClusterCtl::KeyframeUp { .. }
            | ClusterCtl::BitrateUp { .. }
            | ClusterCtl::Signal { .. }) => {
                match self.node.get() {
                    Some(node) => node.on_ctl(msg),
                    None => tracing::warn!(core = self.core, "cluster message for core 0 reached another core"),
                }
            }
            other => {
                self.shell.state.borrow_mut().on_cluster(other, Instant::now());
                self.shell.flush().await;
            }
        }
    }

    async fn media_loop(&self, rx: ConnectedReceiver<ClusterMedia>) {
        let mut batch = Vec::with_capacity(64);
        while let Some(msg) = rx.recv().await {
            batch.push(msg);
            while batch.len() < 64 {
                match poll_once(rx.recv()).await {
                    Some(Some(msg)) => batch.push(msg),
                    _ => break,
                }
            }
            let now = Instant::now();
            let mut ingested = false;
            for msg in batch.drain(..) {
                match msg {
                    ClusterMedia::Cascade { room, packet } => match self.node.get() {
                        Some(node) => node.export_packet(room, &packet),
                        None => ClusterCounters::add(&self.shared.counters.cascade_dropped, 1),
                    },
                    ClusterMedia::Ingest { room, packet } => {
                        self.shell.state.borrow_mut().external_packet(room, packet, now);
                        ingested = true;
                    }
                }
            }
            if ingested {
                self.shell.flush_media().await;
            }
        }
    }

    /// Called at the end of every `CoreShell::flush`: room states and exported packets for core 0.
    pub async fn flush_state(&self, state: &RefCell<CoreState>) {
        let (out, packets) = {
            let mut st = state.borrow_mut();
            if st.cluster.out.is_empty() && st.cluster.cascade_out.is_empty() {
                return;
            }
            (std::mem::take(&mut st.cluster.out), std::mem::take(&mut st.cluster.cascade_out))
        };
        if let Some(node) = self.node.get() {
            for msg in out {
                node.on_ctl(msg);
            }
            for (room, packet) in &packets {
                node.export_packet(*room, packet);
            }
            return;
        }
        let mut full = 0;
        for (room, packet) in packets {
            if self.media.try_send(0, ClusterMedia::Cascade { room, packet }).is_err() {
                full += 1;
            }
        }
        if full > 0 {
            state.borrow_mut().stats.ring_full_drops += full;
        }
        for msg in out {
            if let Err(e) = self.ctl.send(0, msg).await {
                tracing::warn!(core = self.core, error = %e, "cluster message to core 0 lost");
            }
        }
    }

    /// Delivers an instruction from the node (core 0) to `core`.
    async fn deliver(&self, core: usize, msg: ClusterCtl) {
        if core == self.core {
            let _ = self.self_tx.try_send(msg);
        } else if let Err(e) = self.ctl.send(core, msg).await {
            tracing::warn!(core = self.core, to = core, error = %e, "cluster instruction lost");
        }
    }

    /// Hands a cascaded packet to its room's home core.
    fn ingest(&self, core: usize, room: RoomKey, packet: ForwardedPacket, now: Instant) -> bool {
        if core == self.core {
            self.shell.state.borrow_mut().external_packet(room, packet, now);
            true
        } else {
            if self.media.try_send(core, ClusterMedia::Ingest { room, packet }).is_err() {
                ClusterCounters::add(&self.shared.counters.cascade_dropped, 1);
            }
            false
        }
    }

    fn complete(&self, req: u64, reply: SignalResult) {
        if let Some(tx) = self.pending.borrow_mut().remove(&req) {
            let _ = tx.try_send(reply);
        }
    }

    /// Proxies a signalling request to node `to` and waits for its answer.
    pub async fn signal(&self, to: &NodeId, request: SignalRequest) -> SignalResult {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        ClusterCounters::add(&self.shared.counters.signals_proxied, 1);
        let msg = ClusterCtl::Signal { reply_to: self.core, req, to: to.clone(), request };
        if let Some(node) = self.node.get() {
            node.on_ctl(msg);
        } else if self.ctl.send(0, msg).await.is_err() {
            self.pending.borrow_mut().remove(&req);
            return Err("cluster core is not running".into());
        }
        let reply = glommio::timer::timeout(SIGNAL_TIMEOUT, async { Ok(rx.recv().await) }).await.ok().flatten();
        self.pending.borrow_mut().remove(&req);
        reply.unwrap_or_else(|| Err(format!("node {to} did not answer within {}s", SIGNAL_TIMEOUT.as_secs())))
    }
}

// ---------------------------------------------------------------------------------------- node ---

/// What core 0 needs to start the cluster.
pub struct NodeSetup {
    pub socket: UdpSocket,
    pub link: LinkEndpoint,
    pub membership: Membership,
    pub loads: CoreLoads,
    /// Seed addresses re-resolved by a background thread (DNS names behind a headless Service).
    pub seeds: Arc<Mutex<Vec<SocketAddr>>>,
}

/// Core 0's cluster state and tasks.
pub struct ClusterNode {
    port: Weak<ClusterPort>,
    shared: Arc<ClusterShared>,
    socket: Rc<UdpSocket>,
    inner: RefCell<Inner>,
    wake_tx: LocalSender<()>,
    wake_rx: RefCell<Option<LocalReceiver<()>>>,
}

struct PendingSignal {
    to: NodeId,
    reply_to: usize,
    req: u64,
    at: Instant,
}

struct Inner {
    link: LinkEndpoint,
    mem: Membership,
    cascade: Cascade,
    encoder: cascade_wire::Encoder,
    peers: HashMap<PeerId, NodeId>,
    node_peer: HashMap<NodeId, PeerId>,
    signals: HashMap<u64, PendingSignal>,
    /// Work for the pump, collected while the state is borrowed.
    to_cores: Vec<(usize, ClusterCtl)>,
    ingest: Vec<(usize, RoomKey, ForwardedPacket)>,
    serve: Vec<(PeerId, SignalRequest)>,
    transmits: Vec<Transmit>,
    targets: Vec<NodeId>,
    cores: usize,
    loads: CoreLoads,
    cpu: CpuMeter,
    next_load: Instant,
    /// Media bytes of all cores at the previous load sample (bandwidth = the difference over the interval).
    last_media_bytes: Option<(u64, Instant)>,
    seeds: Arc<Mutex<Vec<SocketAddr>>>,
    view_dirty: bool,
}

impl ClusterNode {
    /// Creates the node on core 0 and starts its tasks.
    pub fn start(port: &Rc<ClusterPort>, setup: NodeSetup) -> Rc<Self> {
        let now = Instant::now();
        let cores = port.shell.cores();
        let (wake_tx, wake_rx) = local_channel::new_bounded(1);
        let mut mem = setup.membership;
        mem.handle_timeout(now);
        let node = Rc::new(Self {
            port: Rc::downgrade(port),
            shared: port.shared.clone(),
            socket: Rc::new(setup.socket),
            inner: RefCell::new(Inner {
                link: setup.link,
                mem,
                cascade: Cascade::new(port.shared.me.clone()),
                encoder: cascade_wire::Encoder::default(),
                peers: HashMap::new(),
                node_peer: HashMap::new(),
                signals: HashMap::new(),
                to_cores: Vec::new(),
                ingest: Vec::new(),
                serve: Vec::new(),
                transmits: Vec::new(),
                targets: Vec::new(),
                cores,
                loads: setup.loads,
                cpu: CpuMeter::new(cores),
                next_load: now,
                last_media_bytes: None,
                seeds: setup.seeds,
                view_dirty: true,
            }),
            wake_tx,
            wake_rx: RefCell::new(Some(wake_rx)),
        });
        let _ = port.node.set(node.clone());
        let me = node.clone();
        glommio::spawn_local(async move { me.recv_loop().await }).detach();
        let me = node.clone();
        glommio::spawn_local(async move { me.pump().await }).detach();
        node
    }

    fn kick(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// A message from a core (room state, keyframe, proxied signal).
    fn on_ctl(&self, msg: ClusterCtl) {
        let now = Instant::now();
        {
            let mut i = self.inner.borrow_mut();
            match msg {
                ClusterCtl::RoomState { room, name, local_publisher, wants_remote, h264 } => {
                    let Inner { cascade, mem, node_peer, .. } = &mut *i;
                    cascade.room_state(room, &name, local_publisher, wants_remote, h264, &Members { mem, linked: node_peer });
                    i.view_dirty = true;
                }
                ClusterCtl::KeyframeUp { room } => i.cascade.keyframe_wanted(room, now),
                ClusterCtl::BitrateUp { room, bps } => i.cascade.bitrate_wanted(room, bps, now),
                ClusterCtl::Signal { reply_to, req, to, request } => i.send_signal(now, reply_to, req, to, request),
                _ => {}
            }
            i.glue(now, &self.shared);
        }
        self.kick();
    }

    /// One packet of an exported room: encoded once, queued on every subscribing node's link.
    fn export_packet(&self, room: RoomKey, packet: &ForwardedPacket) {
        let mut guard = self.inner.borrow_mut();
        let i = &mut *guard;
        let mut targets = std::mem::take(&mut i.targets);
        i.cascade.export_targets(room, packet_kind(packet), &mut targets);
        if targets.is_empty() {
            i.targets = targets;
            return;
        }
        let counters = &self.shared.counters;
        match i.encoder.encode(room, packet) {
            Ok(bytes) => {
                let (mut sent, mut dropped) = (0, 0);
                for node in &targets {
                    let ok = i.node_peer.get(node).is_some_and(|&peer| i.link.send_datagram(peer, bytes.clone()).is_ok());
                    if ok {
                        sent += 1;
                    } else {
                        dropped += 1;
                    }
                }
                ClusterCounters::add(&counters.cascade_packets_out, sent);
                ClusterCounters::add(&counters.cascade_dropped, dropped);
            }
            Err(e) => {
                tracing::debug!(error = %e, "cascade packet not encoded");
                ClusterCounters::add(&counters.cascade_dropped, targets.len() as u64);
            }
        }
        i.targets = targets;
        drop(guard);
        self.kick();
    }

    async fn recv_loop(self: Rc<Self>) {
        let mut buf = vec![0u8; 65536];
        let mut batch = RecvBatch::new(32, 2048);
        loop {
            match self.socket.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let more = batch.recv_nonblocking(self.socket.as_raw_fd());
                    let now = Instant::now();
                    {
                        let mut i = self.inner.borrow_mut();
                        i.link.handle_datagram(now, from, BytesMut::from(&buf[..n]));
                        for (from, data) in batch.iter(more) {
                            i.link.handle_datagram(now, from, BytesMut::from(data));
                        }
                    }
                    self.kick();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster socket receive failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn pump(self: Rc<Self>) {
        let Some(wake) = self.wake_rx.borrow_mut().take() else { return };
        loop {
            let now = Instant::now();
            let (transmits, to_cores, ingest, serve, next) = {
                let mut i = self.inner.borrow_mut();
                i.tick(now, &self.shared);
                i.glue(now, &self.shared);
                let next = i.next_deadline();
                (
                    std::mem::take(&mut i.transmits),
                    std::mem::take(&mut i.to_cores),
                    std::mem::take(&mut i.ingest),
                    std::mem::take(&mut i.serve),
                    next,
                )
            };
            self.send(&transmits).await;
            let busy = !(to_cores.is_empty() && ingest.is_empty() && serve.is_empty());
            if let Some(port) = self.port.upgrade() {
                let mut flush_here = false;
                for (core, room, packet) in ingest {
                    flush_here |= port.ingest(core, room, packet, now);
                }
                if flush_here {
                    port.shell.flush_media().await;
                }
                for (core, msg) in to_cores {
                    port.deliver(core, msg).await;
                }
                for (peer, request) in serve {
                    let me = self.clone();
                    let shell = port.shell.clone();
                    glommio::spawn_local(async move {
                        let reply = crate::http_api::serve_signal(&shell, request).await;
                        me.reply_signal(peer, reply);
                    })
                    .detach();
                }
            }
            if busy {
                continue;
            }
            let wait = next.saturating_duration_since(Instant::now()).min(MAX_WAIT);
            if !wait.is_zero() {
                futures_lite::future::or(
                    async {
                        let _ = wake.recv().await;
                    },
                    glommio::timer::sleep(wait),
                )
                .await;
            }
        }
    }

    fn reply_signal(&self, peer: PeerId, reply: SignalReply) {
        {
            let mut i = self.inner.borrow_mut();
            ClusterCounters::add(&self.shared.counters.signals_served, 1);
            if let Err(e) = i.link.send_control(peer, &WireMsg::SignalReply(reply)) {
                tracing::warn!(peer = %peer, error = %e, "signalling reply lost");
            }
        }
        self.kick();
    }

    /// Sends queued QUIC datagrams: `sendmmsg` without waiting, then one by one if the buffer is full.
    async fn send(&self, transmits: &[Transmit]) {
        if transmits.is_empty() {
            return;
        }
        let batch: Vec<Outgoing> = transmits.iter().map(|t| Outgoing { to: t.dest, data: &t.bytes }).collect();
        let res = send_batch_nonblocking(self.socket.as_raw_fd(), &batch);
        for o in &batch[res.sent + res.failed..] {
            let _ = self.socket.send_to(o.data, o.to).await;
        }
    }

    /// Announces a graceful leave and sends it (at shutdown).
    pub async fn leave(&self) {
        let transmits = {
            let mut i = self.inner.borrow_mut();
            i.mem.leave();
            let now = Instant::now();
            i.glue(now, &self.shared);
            std::mem::take(&mut i.transmits)
        };
        self.send(&transmits).await;
    }
}

impl Inner {
    /// Timers: QUIC, gossip, load and view snapshot, new seed addresses, stale proxied requests.
    fn tick(&mut self, now: Instant, shared: &ClusterShared) {
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
        }
        if self.mem.poll_timeout().is_some_and(|t| t <= now) {
            self.mem.handle_timeout(now);
        }
        if now < self.next_load && !self.view_dirty {
            return;
        }
        if now >= self.next_load {
            self.next_load = now + LOAD_TICK;
            let sessions: usize = self.loads.iter().map(|l| l.sessions.load(Ordering::Relaxed)).sum();
            let bytes: u64 = self.loads.iter().map(|l| l.media_bytes.load(Ordering::Relaxed)).sum();
            let bandwidth_bps = match self.last_media_bytes.replace((bytes, now)) {
                Some((before, at)) if now > at => {
                    (bytes.saturating_sub(before) as f64 * 8.0 / now.duration_since(at).as_secs_f64()) as u64
                }
                _ => 0,
            };
            let cpu = self.cpu.sample(now);
            self.mem.update_self_load(Load { cpu_permille: cpu, sessions: sessions as u32, bandwidth_bps });
            let seeds = match self.seeds.lock() {
                Ok(s) => s.clone(),
                Err(p) => p.into_inner().clone(),
            };
            for addr in seeds {
                self.link.keep_linked(now, addr);
            }
            let stale: Vec<u64> =
                self.signals.iter().filter(|(_, s)| now.saturating_duration_since(s.at) > SIGNAL_TIMEOUT).map(|(id, _)| *id).collect();
            for id in stale {
                self.signals.remove(&id);
            }
        }
        self.view_dirty = false;
        shared.publish(self.view());
    }

    fn next_deadline(&mut self) -> Instant {
        [self.link.poll_timeout(), self.mem.poll_timeout(), Some(self.next_load)].into_iter().flatten().min().unwrap_or(self.next_load)
    }

    /// Moves outputs between links, membership and cascade until all are quiet; queues the rest for the pump.
    fn glue(&mut self, now: Instant, shared: &ClusterShared) {
        loop {
            let mut moved = false;
            while let Some(out) = self.mem.poll_output() {
                moved = true;
                match out {
                    MembershipOutput::Send { to, msg } => {
                        if let Some(&peer) = self.node_peer.get(&to) {
                            // Gossip is periodic: a full queue or a link going down loses nothing that matters.
                            let _ = self.link.send_control(peer, &WireMsg::Gossip(msg));
                        }
                    }
                    MembershipOutput::Connect(a) => self.link.keep_linked(now, a),
                    MembershipOutput::Disconnect(a) => self.link.forget(a),
                    MembershipOutput::Event(e) => self.on_member_event(e),
                }
            }
            while let Some(ev) = self.link.poll_event() {
                moved = true;
                self.on_link_event(now, ev, shared);
            }
            while let Some(action) = self.cascade.poll_action() {
                moved = true;
                if matches!(action, Action::Send { msg: WireMsg::BitrateHint(_), .. }) {
                    ClusterCounters::add(&shared.counters.cascade_bitrate_hints, 1);
                }
                self.on_action(action);
            }
            if !moved {
                break;
            }
        }
        while let Some(t) = self.link.poll_transmit() {
            self.transmits.push(t);
        }
    }

    fn on_member_event(&mut self, e: MembershipEvent) {
        match &e {
            MembershipEvent::NodeJoined { id, incarnation, replaced } => {
                tracing::info!(node = %id, incarnation, replaced = ?replaced, "cluster node joined");
                if replaced.is_some() {
                    self.cascade.node_gone(id, &Members { mem: &self.mem, linked: &self.node_peer });
                }
            }
            MembershipEvent::NodeDead { id, incarnation } => {
                tracing::warn!(node = %id, incarnation, "cluster node dead");
                self.cascade.node_gone(id, &Members { mem: &self.mem, linked: &self.node_peer });
            }
            MembershipEvent::NodeLeft { id, incarnation } => {
                tracing::info!(node = %id, incarnation, "cluster node left");
                self.cascade.node_gone(id, &Members { mem: &self.mem, linked: &self.node_peer });
            }
            MembershipEvent::NodeSuspect { id } => tracing::info!(node = %id, "cluster node suspect"),
            MembershipEvent::NodeUpdated { .. } => {}
        }
        self.cascade.reconcile(&Members { mem: &self.mem, linked: &self.node_peer });
        self.view_dirty = true;
    }

    fn on_link_event(&mut self, now: Instant, ev: LinkEvent, shared: &ClusterShared) {
        match ev {
            LinkEvent::Up { peer, node_id, addr, .. } => {
                tracing::info!(node = %node_id, %addr, peer = %peer, "cluster link up");
                self.peers.insert(peer, node_id.clone());
                self.node_peer.insert(node_id.clone(), peer);
                self.mem.handle_link_up(now, &node_id);
                self.cascade.link_up(&node_id);
                // A zone peer reachable again may be the relay of some rooms again.
                self.cascade.reconcile(&Members { mem: &self.mem, linked: &self.node_peer });
                self.view_dirty = true;
            }
            LinkEvent::Down { peer, node_id, reason } => {
                tracing::info!(node = %node_id, peer = %peer, reason = ?reason, "cluster link down");
                self.peers.remove(&peer);
                if self.node_peer.get(&node_id) == Some(&peer) {
                    self.node_peer.remove(&node_id);
                    self.cascade.node_gone(&node_id, &Members { mem: &self.mem, linked: &self.node_peer });
                    // Rooms relayed to us by that node move to the next-ranked reachable node now.
                    self.cascade.reconcile(&Members { mem: &self.mem, linked: &self.node_peer });
                    let failed: Vec<u64> = self.signals.iter().filter(|(_, s)| s.to == node_id).map(|(id, _)| *id).collect();
                    for id in failed {
                        if let Some(s) = self.signals.remove(&id) {
                            self.signal_done(s, Err(format!("link to {node_id} went down")));
                        }
                    }
                }
                self.view_dirty = true;
            }
            LinkEvent::AuthFailed { addr, node_id, reason } => {
                ClusterCounters::add(&shared.counters.auth_refused, 1);
                tracing::warn!(%addr, node = ?node_id.map(|n| n.to_string()), reason = ?reason,
                    "cluster node refused: its proof of the cluster secret does not match ours (different --secret?)");
            }
            LinkEvent::Control { peer, msg } => {
                let Some(from) = self.peers.get(&peer).cloned() else { return };
                match msg {
                    WireMsg::Gossip(g) => self.mem.handle_message(now, &from, g),
                    WireMsg::SignalRequest(r) => self.serve.push((peer, r)),
                    WireMsg::SignalReply(r) => {
                        if let Some(s) = self.signals.remove(&r.id) {
                            self.signal_done(s, Ok(r));
                        }
                    }
                    other => {
                        // Subscribe/Unsubscribe change exports: show them in /healthz now, not at the next tick.
                        self.cascade.on_message(&from, &other, now, &Members { mem: &self.mem, linked: &self.node_peer });
                        self.view_dirty = true;
                    }
                }
            }
            LinkEvent::Datagram { peer, bytes } => {
                let counters = &shared.counters;
                let Some(from) = self.peers.get(&peer) else { return };
                let wanted = cascade_wire::room_of(&bytes).is_some_and(|room| self.cascade.accepts(from, room));
                if !wanted {
                    ClusterCounters::add(&counters.cascade_dropped, 1);
                    return;
                }
                match cascade_wire::decode(&bytes, now) {
                    Ok((room, packet)) => {
                        ClusterCounters::add(&counters.cascade_packets_in, 1);
                        self.ingest.push((room.home_core(self.cores), room, packet));
                    }
                    Err(e) => {
                        tracing::debug!(node = %from, error = %e, "bad cascade datagram");
                        ClusterCounters::add(&counters.cascade_dropped, 1);
                    }
                }
            }
        }
    }

    fn on_action(&mut self, action: Action) {
        let home = |room: RoomKey| room.home_core(self.cores);
        match action {
            Action::Send { to, msg } => {
                if let Some(&peer) = self.node_peer.get(&to) {
                    if let Err(e) = self.link.send_control(peer, &msg) {
                        tracing::debug!(node = %to, error = %e, "cascade message not sent");
                    }
                }
            }
            Action::IngestStart { room, name, from } => {
                tracing::info!(room = %name, from = %from, "cascading room from node");
                self.to_cores.push((home(room), ClusterCtl::IngestStart { room, name, from }));
            }
            Action::IngestStop { room } => self.to_cores.push((home(room), ClusterCtl::IngestStop { room })),
            Action::ExportStart { room, name } => {
                tracing::info!(room = %name, "room exported to the cluster");
                self.to_cores.push((home(room), ClusterCtl::ExportStart { room, name }));
            }
            Action::ExportStop { room } => {
                self.encoder.forget(room);
                self.to_cores.push((home(room), ClusterCtl::ExportStop { room }));
            }
            Action::Keyframe { room } => self.to_cores.push((home(room), ClusterCtl::Keyframe { room })),
            Action::Bitrate { room, bps, from } => {
                self.to_cores.push((home(room), ClusterCtl::Bitrate { room, bps, from }))
            }
            Action::Rooms(rooms) => {
                self.mem.set_rooms(rooms);
                self.view_dirty = true;
            }
        }
    }

    /// Gateway side: sends a proxied signalling request to `to`.
    fn send_signal(&mut self, now: Instant, reply_to: usize, req: u64, to: NodeId, mut request: SignalRequest) {
        let id = ((reply_to as u64) << 48) | (req & 0xffff_ffff_ffff);
        request.id = id;
        let pending = PendingSignal { to: to.clone(), reply_to, req, at: now };
        let Some(&peer) = self.node_peer.get(&to) else {
            self.signal_done(pending, Err(format!("no link to node {to}")));
            return;
        };
        match self.link.send_control(peer, &WireMsg::SignalRequest(request)) {
            Ok(()) => {
                self.signals.insert(id, pending);
            }
            Err(e) => self.signal_done(pending, Err(format!("cannot reach node {to}: {e}"))),
        }
    }

    fn signal_done(&mut self, s: PendingSignal, reply: SignalResult) {
        self.to_cores.push((s.reply_to, ClusterCtl::SignalDone { req: s.req, reply }));
    }

    fn view(&mut self) -> ClusterView {
        let me = self.mem.local();
        let mut nodes = vec![ViewNode {
            id: me.id.clone(),
            zone: me.zone.clone(),
            status: "alive",
            incarnation: me.incarnation,
            load: me.load,
            rooms: publishes(&me.rooms),
            pulls: pulls(&me.rooms),
            http: me.addrs.http,
            quic: me.addrs.quic,
            is_self: true,
        }];
        nodes.extend(self.mem.members().map(|m| ViewNode {
            id: m.info.id.clone(),
            zone: m.info.zone.clone(),
            status: match m.status {
                MemberStatus::Alive => "alive",
                MemberStatus::Suspect => "suspect",
                MemberStatus::Dead => "dead",
                MemberStatus::Left => "left",
            },
            incarnation: m.info.incarnation,
            load: m.info.load,
            rooms: publishes(&m.info.rooms),
            pulls: pulls(&m.info.rooms),
            http: m.info.addrs.http,
            quic: m.info.addrs.quic,
            is_self: false,
        }));
        // The publisher's node's word first, then any node that pulls the room.
        let mut h264 = HashMap::new();
        let all = || std::iter::once(me).chain(self.mem.members().filter(|m| m.is_live()).map(|m| &m.info));
        for publisher in [true, false] {
            for info in all() {
                for (room, r) in info.rooms.iter().filter(|(_, r)| r.publisher == publisher) {
                    if let Some(p) = r.h264_profile_level_id {
                        h264.entry(room.clone()).or_insert(p);
                    }
                }
            }
        }
        ClusterView {
            h264,
            nodes,
            links_up: self.link.links().count(),
            subscriptions: self
                .cascade
                .subscriptions()
                .map(|p| ViewSubscription {
                    room: p.room.to_string(),
                    from: p.from.cloned(),
                    relaying: p.relaying,
                    viewers: p.viewers,
                })
                .collect(),
            exports: self
                .cascade
                .exports()
                .map(|(room, node, sub)| ViewExport { room: room.to_string(), node: node.clone(), packets: sub.packets })
                .collect(),
        }
    }
}

fn publishes(rooms: &sfumato_cluster::CarriedRooms) -> Vec<String> {
    rooms.iter().filter(|(_, r)| r.publisher).map(|(n, _)| n.clone()).collect()
}

fn pulls(rooms: &sfumato_cluster::CarriedRooms) -> Vec<String> {
    rooms.iter().filter(|(_, r)| !r.publisher).map(|(n, _)| n.clone()).collect()
}

/// Membership as cascading sees it: a room comes from the live node hosting its publisher — directly in
/// that node's zone, elsewhere through this zone's relay for the room ([`relay::upstream`]: rendezvous
/// hashing over this zone's live nodes, alive or suspect like [`Membership::node_hosting`], so a node that
/// misses a heartbeat or two does not move relays around) that this node has a link to: a relay whose
/// link went down (QUIC idle timeout, ~2.5 s) can't deliver, so the room moves to the next-ranked node
/// then, without waiting for membership's dead verdict (~4 s).
struct Members<'a> {
    mem: &'a Membership,
    /// Nodes with an authenticated link up.
    linked: &'a HashMap<NodeId, PeerId>,
}

impl Directory for Members<'_> {
    fn upstream(&self, room: &str) -> Option<NodeId> {
        let me = self.mem.local();
        let host = self.mem.node_hosting(room)?;
        let peers = self
            .mem
            .members()
            .filter(|m| m.is_live() && m.info.zone == me.zone && self.linked.contains_key(&m.info.id))
            .map(|m| &m.info.id);
        relay::upstream(&me.id, &me.zone, room, &host.id, &host.zone, peers)
    }
}

fn packet_kind(p: &ForwardedPacket) -> sfumato_cluster::TrackKind {
    match p.kind() {
        sfumato_media::packet::TrackKind::Audio => sfumato_cluster::TrackKind::Audio,
        sfumato_media::packet::TrackKind::Video => sfumato_cluster::TrackKind::Video,
    }
}
