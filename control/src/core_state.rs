//! Everything one core owns — its WebRTC sessions, the rooms whose home it is, its viewers — and how it
//! reacts to datagrams, timeouts and messages from other cores.
//!
//! No IO happens here: every reaction appends to `outbox` (datagrams to send), `control_out` (messages to
//! other cores) and `media_out` (packets to other cores). The shell in `core_shell.rs` performs them. That
//! keeps the borrow of this state short (never held across an `.await`) and the logic testable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use sfumato_media::packet::{ForwardedPacket, PayloadParams};
use sfumato_media::room::{LocalViewers, RoomChange, RoomError, RoomKey, RoomRouter, SessionId, SessionMap};
use sfumato_media::stun;
use sfumato_media::seq_rewrite::Skip;
use sfumato_media::webrtc::{Role, SessionError, SessionEvent, TrickleOutcome, ViewerOptions, WebRtcSession, WriteSkip};
use str0m::config::DtlsCert;

use crate::messages::{ControlMsg, Created, MediaMsg, OfferError, OfferRequest, ResourceId, ResourceOp, ResourceOutcome};
use crate::events::{now_ms, EventBus, EventRecord};
use crate::stats::CoreStats;

#[path = "core_cluster.rs"]
mod cluster;
pub use cluster::{CoreCluster, ExternalKind};
use cluster::External;

#[path = "bitrate.rs"]
pub mod bitrate;
use bitrate::{HintFrom, RoomBitrate};

#[path = "core_rtmp.rs"]
mod rtmp;
pub use rtmp::CoreRtmp;

/// How often `session.stats` events are emitted.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

struct SessionEntry {
    session: WebRtcSession,
    room: RoomKey,
    room_name: String,
    nonce: u64,
    owner: Option<u64>,
    peer: Option<String>,
    remote_addrs: Vec<SocketAddr>,
    /// Publisher: which kinds have sent RTP (for track.started/stopped).
    tracks_started: [bool; 2],
    /// Packets and bytes through this session (received for publishers, forwarded for viewers).
    packets: u64,
    bytes: u64,
    /// Counters at the last session.stats event.
    reported: (u64, u64, Instant),
    /// Viewer: packets were written since the last poll; the oldest one's arrival time (latency accounting).
    written_since: Option<Instant>,
    /// Viewer: that oldest packet came from an RTMP publisher (its latency goes to `rtmp_forward_latency_us`).
    written_rtmp: bool,
}

/// A datagram waiting to be sent from the socket bound to `from`.
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
    /// For datagrams produced by forwarding: when the publisher's packet arrived (latency accounting).
    pub origin: Option<Instant>,
    /// `origin` is when an RTMP connection read the packet's FLV message (not a UDP arrival).
    pub rtmp: bool,
}

pub struct CoreState {
    pub core: usize,
    pub cores: usize,
    candidates: Vec<SocketAddr>,
    cert: Option<DtlsCert>,
    sessions: SessionMap<SessionEntry>,
    by_ufrag: HashMap<String, SessionId>,
    by_addr: HashMap<SocketAddr, SessionId>,
    router: RoomRouter,
    /// Rooms (whose home this core is) with an external publisher: RTMP or the cluster (`core_cluster.rs`).
    external: HashMap<RoomKey, External>,
    /// Cluster bookkeeping (`sfumato media`): room states for core 0, packets of exported rooms.
    pub cluster: CoreCluster,
    /// RTMP rooms homed here (GOP cache, replace) and notices for RTMP connections here (`core_rtmp.rs`).
    rtmp_state: CoreRtmp,
    viewers: LocalViewers,
    /// Bitrate feedback per room (`bitrate.rs`): local viewers' estimates; on the home core, every core's.
    bitrate: HashMap<RoomKey, RoomBitrate>,
    last_bitrate_sweep: Instant,
    /// `--viewer-bwe` (str0m's TWCC bandwidth estimation on viewers, else only their REMB is used) and
    /// `--str0m-send` (viewers' media through str0m's `write_rtp` instead of the direct send path).
    pub viewer: ViewerOptions,
    next_session: u64,
    nonce_state: u64,
    scratch: Vec<Vec<SessionEvent>>,
    /// Reused by [`CoreState::run_due_timeouts`].
    due_scratch: Vec<SessionId>,
    /// No session's str0m deadline is earlier than this (None: no session). Lowered after every poll, made
    /// exact by [`CoreState::run_due_timeouts`], so the check it does after every burst of datagrams is one
    /// comparison instead of a scan of all sessions.
    earliest_timeout: Option<Instant>,
    /// Viewers written to since they were last polled. Polling once per batch instead of once per packet
    /// lets str0m release a whole frame's packets in one timeout round (see `poll_written`).
    written: Vec<SessionId>,
    /// How many of `written` were polled already (the shell polls in chunks).
    written_next: usize,
    pub stats: CoreStats,
    events: EventBus,
    last_stats_report: Instant,
    pub outbox: Vec<Datagram>,
    pub control_out: Vec<(usize, ControlMsg)>,
    pub media_out: Vec<(usize, MediaMsg)>,
}

impl CoreState {
    pub fn new(
        core: usize,
        cores: usize,
        candidates: Vec<SocketAddr>,
        cert: Option<DtlsCert>,
        events: EventBus,
    ) -> Self {
        let seed = ((std::process::id() as u64) << 32) ^ core as u64;
        Self {
            core,
            cores,
            candidates,
            cert,
            sessions: SessionMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            router: RoomRouter::new(core),
            external: HashMap::new(),
            cluster: CoreCluster::default(),
            rtmp_state: CoreRtmp::default(),
            viewers: LocalViewers::default(),
            bitrate: HashMap::new(),
            last_bitrate_sweep: Instant::now(),
            viewer: ViewerOptions::default(),
            next_session: 0,
            nonce_state: seed ^ random_seed(),
            scratch: Vec::new(),
            due_scratch: Vec::new(),
            earliest_timeout: None,
            written: Vec::new(),
            written_next: 0,
            stats: CoreStats::default(),
            events,
            last_stats_report: Instant::now(),
            outbox: Vec::new(),
            control_out: Vec::new(),
            media_out: Vec::new(),
        }
    }

    fn next_nonce(&mut self) -> u64 {
        // splitmix64: unpredictable enough for URL nonces seeded from the OS.
        self.nonce_state = self.nonce_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.nonce_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Sends `msg` to `core`, or handles it right here if it is this core.
    fn send_control(&mut self, core: usize, msg: ControlMsg, now: Instant) {
        if core == self.core {
            self.on_control(msg, now);
        } else {
            self.control_out.push((core, msg));
        }
    }

    // ---- signalling -------------------------------------------------------------------------------------

    /// Creates a session for an SDP offer. Publishers must be created on the room's home core.
    /// `room_video`: for a viewer, its room's current video format ([`RoomRouter::video_format`] on the
    /// room's home core), so the answer names the stream's real H.264 profile.
    pub fn create_session(
        &mut self,
        offer: &OfferRequest,
        room_video: Option<&PayloadParams>,
        now: Instant,
    ) -> Result<Created, OfferError> {
        let (role, room, sdp) = (offer.role, offer.room.as_str(), offer.sdp.as_str());
        let key = RoomKey::of(room);
        let home = key.home_core(self.cores);
        if role == Role::Publisher && home != self.core {
            return Err(OfferError::Unavailable(format!("publisher offer routed to core {} not home {}", self.core, home)));
        }
        if role == Role::Publisher {
            self.yield_cascade(key);
        }
        if role == Role::Publisher && self.router.publisher(key).is_some() {
            return Err(OfferError::RoomBusy);
        }
        let (mut session, answer) =
            WebRtcSession::accept(role, sdp, &self.candidates, self.cert.clone(), self.viewer, room_video, now).map_err(|e| match e {
                SessionError::BadSdp(_) | SessionError::NoUsableMedia(_) | SessionError::IncompatibleH264 { .. } => {
                    OfferError::BadOffer(e.to_string())
                }
                other => OfferError::Unavailable(other.to_string()),
            })?;
        self.next_session += 1;
        let id = SessionId::new(self.core, self.next_session);
        let nonce = self.next_nonce();
        let mut changes = Vec::new();
        match role {
            Role::Publisher => {
                let source = self.router.publish(key, room, id, &mut changes).map_err(|e| match e {
                    RoomError::AlreadyPublished => OfferError::RoomBusy,
                })?;
                session.set_source(source);
                self.stats.publishers += 1;
            }
            Role::Viewer => {
                if self.viewers.add(key, id) {
                    let msg = ControlMsg::ViewerCoreJoined { room: key, name: room.to_string(), core: self.core };
                    self.send_control(home, msg, now);
                }
                self.stats.viewers += 1;
            }
        }
        self.room_changes(&changes);
        self.cluster_sync(key);
        self.by_ufrag.insert(session.local_ufrag().to_string(), id);
        self.note_timeout(session.next_timeout());
        self.sessions.insert(
            id,
            SessionEntry {
                session,
                room: key,
                room_name: room.to_string(),
                nonce,
                owner: offer.owner,
                peer: offer.peer.clone(),
                remote_addrs: Vec::new(),
                tracks_started: [false; 2],
                packets: 0,
                bytes: 0,
                reported: (0, 0, now),
                written_since: None,
                written_rtmp: false,
            },
        );
        self.emit_session(id, "peer.joined", serde_json::json!({ "role": role_name(role) }));
        self.stats.sessions_created += 1;
        tracing::info!(core = self.core, session = id.0, ?role, room, "session created");
        self.drain_session(id, now);
        Ok(Created { resource: ResourceId { session: id, nonce }, answer })
    }

    /// DELETE/PATCH on a resource this core owns.
    pub fn resource_op(&mut self, id: ResourceId, op: ResourceOp, presented: Option<u64>, now: Instant) -> ResourceOutcome {
        match self.sessions.get_mut(&id.session) {
            Some(entry) if entry.nonce == id.nonce => {
                if entry.owner.is_some() && entry.owner != presented {
                    return ResourceOutcome::Forbidden;
                }
                match op {
                    ResourceOp::Delete => {
                        entry.session.close();
                        self.remove_session(id.session, "deleted", now);
                        ResourceOutcome::Done
                    }
                    ResourceOp::Patch { fragment, if_match } => self.trickle(id, &fragment, if_match.as_deref(), now),
                }
            }
            _ => ResourceOutcome::NotFound,
        }
    }

    /// PATCH: trickle candidates or an ICE restart on the session `id` (which exists and passed the owner check).
    fn trickle(&mut self, id: ResourceId, fragment: &str, if_match: Option<&str>, now: Instant) -> ResourceOutcome {
        let Some(entry) = self.sessions.get_mut(&id.session) else { return ResourceOutcome::NotFound };
        let etag = etag_of(id, entry.session.ice_generation());
        if let Some(m) = if_match {
            let m = m.trim();
            if m != "*" && m.trim_matches('"') != etag {
                return ResourceOutcome::PreconditionFailed;
            }
        }
        let old_ufrag = entry.session.local_ufrag().to_string();
        let outcome = match entry.session.apply_trickle(fragment) {
            Ok(TrickleOutcome::Candidates(n)) => {
                tracing::debug!(core = self.core, session = id.session.0, candidates = n, "trickle ICE");
                ResourceOutcome::Done
            }
            Ok(TrickleOutcome::Restarted { answer_fragment }) => {
                let new_ufrag = entry.session.local_ufrag().to_string();
                let etag = etag_of(id, entry.session.ice_generation());
                self.by_ufrag.remove(&old_ufrag);
                self.by_ufrag.insert(new_ufrag, id.session);
                self.stats.ice_restarts += 1;
                tracing::info!(core = self.core, session = id.session.0, "ICE restart");
                ResourceOutcome::IceRestarted { fragment: answer_fragment, etag }
            }
            Err(e) => ResourceOutcome::BadFragment(e.to_string()),
        };
        self.drain_session(id.session, now);
        outcome
    }

    // ---- RTMP publishers (the connection lives on whichever core accepted it) -----------------------------
    // They are external publishers (`core_cluster.rs`), like rooms cascaded from another node.

    /// Registers an RTMP publisher for `room`, which must be homed on this core. Returns its source id.
    pub fn rtmp_publish_start(&mut self, room: &str) -> Result<u64, OfferError> {
        self.rtmp_publish_from(room, self.core, Instant::now())
    }

    /// A packet from a room's RTMP publisher: fanned out like a WebRTC publisher's.
    pub fn rtmp_packet(&mut self, room: RoomKey, packet: ForwardedPacket, now: Instant) {
        self.rtmp_observe(room, &packet);
        self.external_packet(room, packet, now);
    }

    /// Unregisters the RTMP publisher `source` of `room` (no-op if it is not the current one).
    pub fn rtmp_publish_stop(&mut self, room: RoomKey, source: u64) {
        self.rtmp_forget(room, source);
        self.external_publish_stop(room, Some(source));
    }

    // ---- UDP --------------------------------------------------------------------------------------------

    pub fn on_datagram(&mut self, now: Instant, remote: SocketAddr, local: SocketAddr, buf: &[u8]) {
        self.stats.udp_datagrams_in += 1;
        self.stats.udp_bytes_in += buf.len() as u64;
        let id = match self.by_addr.get(&remote) {
            Some(id) => *id,
            None => {
                // Only a STUN binding request naming one of our sessions may introduce a new address.
                let Some(id) = stun::local_ufrag(buf).and_then(|u| self.by_ufrag.get(u)).copied() else {
                    self.stats.udp_unroutable += 1;
                    return;
                };
                id
            }
        };
        let Some(entry) = self.sessions.get_mut(&id) else {
            self.stats.udp_unroutable += 1;
            return;
        };
        if entry.session.handle_datagram(now, remote, local, buf) {
            if !entry.remote_addrs.contains(&remote) && entry.remote_addrs.len() < 8 {
                entry.remote_addrs.push(remote);
                self.by_addr.insert(remote, id);
            }
        } else {
            self.stats.udp_rejected += 1;
        }
        self.drain_session(id, now);
    }

    // ---- timers -----------------------------------------------------------------------------------------

    /// Drives every session whose timeout is due and reaps dead ones. Returns (a lower bound of) the next deadline.
    pub fn on_tick(&mut self, now: Instant) -> Option<Instant> {
        self.run_due_timeouts(now);
        let dead: Vec<SessionId> =
            self.sessions.iter().filter(|(_, e)| !e.session.is_alive(now)).map(|(id, _)| *id).collect();
        for id in dead {
            let reason = if self.sessions.get(&id).is_some_and(|e| e.session.is_connected()) {
                "disconnected"
            } else {
                "never connected"
            };
            self.remove_session(id, reason, now);
        }
        self.report_stats(now);
        self.bitrate_sweep(now);
        // A lower bound (exact unless a session was removed since): the timer only uses it to pick its sleep.
        self.earliest_timeout
    }

    /// Drives the sessions whose str0m timeout is due. Called on every timer tick and after every burst of
    /// datagrams: while media flows, timeouts ride on the wake-ups the packets cause anyway, so the timer task
    /// can sleep longer (each wake-up of an idle core costs a park/unpark of the reactor). Returns whether
    /// any session was due.
    pub fn run_due_timeouts(&mut self, now: Instant) -> bool {
        match self.earliest_timeout {
            Some(t) if t <= now => {}
            _ => return false,
        }
        // One scan: the due sessions, and the exact earliest deadline of the others; driving a due session
        // notes its new deadline (`drain_session`), so the bound is exact again afterwards.
        let mut due = std::mem::take(&mut self.due_scratch);
        let mut rest: Option<Instant> = None;
        for (id, e) in self.sessions.iter() {
            let t = e.session.next_timeout();
            if t <= now {
                due.push(*id);
            } else if rest.is_none_or(|r| t < r) {
                rest = Some(t);
            }
        }
        self.earliest_timeout = rest;
        for &id in &due {
            if let Some(e) = self.sessions.get_mut(&id) {
                e.session.handle_timeout(now);
            }
            self.drain_session(id, now);
        }
        let any = !due.is_empty();
        due.clear();
        self.due_scratch = due;
        any
    }

    fn note_timeout(&mut self, t: Instant) {
        if self.earliest_timeout.is_none_or(|e| t < e) {
            self.earliest_timeout = Some(t);
        }
    }

    // ---- messages from other cores ----------------------------------------------------------------------

    pub fn on_control(&mut self, msg: ControlMsg, now: Instant) {
        match msg {
            ControlMsg::Offer { reply_to, req, offer, room_video } => {
                let result = self.create_session(&offer, room_video.as_ref(), now);
                self.control_out.push((reply_to, ControlMsg::OfferDone { req, result }));
            }
            ControlMsg::Resource { reply_to, req, id, op, presented } => {
                let outcome = self.resource_op(id, op, presented, now);
                self.control_out.push((reply_to, ControlMsg::ResourceDone { req, outcome }));
            }
            ControlMsg::ViewerCoreJoined { room, name, core } => {
                let mut changes = Vec::new();
                self.router.add_viewer_core(room, &name, core, &mut changes);
                self.room_changes(&changes);
                self.cluster_sync(room);
            }
            ControlMsg::ViewerCoreLeft { room, core } => {
                if let Some(r) = self.bitrate.get_mut(&room) {
                    r.reporters.remove(&HintFrom::Core(core));
                }
                let mut changes = Vec::new();
                self.router.remove_viewer_core(room, core, &mut changes);
                self.room_changes(&changes);
                self.cluster_sync(room);
            }
            ControlMsg::KeyframeRequest { room } => {
                // RTMP can't be asked for a keyframe (viewers wait for the next one); a cascade asks upstream.
                if self.external_keyframe(room) {
                    return;
                }
                if let Some((publisher, _)) = self.router.publisher(room) {
                    if let Some(e) = self.sessions.get_mut(&publisher) {
                        if e.session.request_keyframe(now) {
                            self.stats.keyframe_requests += 1;
                        }
                    }
                    self.drain_session(publisher, now);
                }
            }
            ControlMsg::BitrateHint { room, bps, core } => self.bitrate_hint(room, HintFrom::Core(core), bps, now),
            ControlMsg::RoomVideo { reply_to, req, room } => {
                let video = self.router.video_format(room);
                self.control_out.push((reply_to, ControlMsg::RoomVideoDone { req, video }));
            }
            ControlMsg::StatsRequest { reply_to, req } => {
                let stats = self.snapshot();
                self.control_out.push((reply_to, ControlMsg::StatsDone { req, stats }));
            }
            ControlMsg::RtmpPublish { reply_to, req, room } => {
                let result = self.rtmp_publish_from(&room, reply_to, now);
                self.control_out.push((reply_to, ControlMsg::RtmpPublishDone { req, result }));
            }
            ControlMsg::RtmpUnpublish { room, source } => self.rtmp_publish_stop(room, source),
            ControlMsg::GopReplay { room, viewer } => self.gop_replay_request(room, viewer, now),
            ControlMsg::RtmpReplaced { room, source } => self.rtmp_mark_replaced(room, source),
            // Replies are consumed by the shell before they reach the state.
            ControlMsg::OfferDone { .. }
            | ControlMsg::ResourceDone { .. }
            | ControlMsg::StatsDone { .. }
            | ControlMsg::RoomVideoDone { .. }
            | ControlMsg::RtmpPublishDone { .. } => {}
        }
    }

    pub fn on_media(&mut self, msg: MediaMsg, now: Instant) {
        match msg {
            MediaMsg::Forward { room, packet, rtmp } => self.deliver_local(room, &packet, now, rtmp),
            MediaMsg::RtmpPacket { room, packet } => self.rtmp_packet(room, packet, now),
            MediaMsg::GopReplay { room, viewer, packets } => self.gop_replay_local(room, viewer, packets, now),
        }
    }

    pub fn snapshot(&self) -> CoreStats {
        let mut s = self.stats.clone();
        // The counter is shared by every core's bus clone: report it once so sums stay right.
        s.events_queue_dropped = if self.core == 0 { self.events.dropped() } else { 0 };
        s.sessions = self.sessions.len() as u64;
        s.rooms = self.router.len() as u64;
        s
    }

    /// The current video format of a room whose home is this core ([`RoomRouter::video_format`]).
    pub fn router_video_format(&self, room: RoomKey) -> Option<PayloadParams> {
        self.router.video_format(room)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Nothing here needs the periodic tick: no session (str0m deadlines, liveness, stats) and no room
    /// whose bitrate hints are swept. The core's timer then sleeps long (`core_shell.rs`, `TICK_IDLE`).
    pub fn is_idle(&self) -> bool {
        self.sessions.is_empty() && self.bitrate.is_empty()
    }

    // ---- internals --------------------------------------------------------------------------------------

    /// Polls a session until it has nothing more to say and acts on what it said.
    fn drain_session(&mut self, id: SessionId, now: Instant) {
        let mut events = self.scratch.pop().unwrap_or_default();
        let (room, role, deadline) = match self.sessions.get_mut(&id) {
            Some(e) => {
                e.session.poll(now, &mut events);
                (e.room, e.session.role(), e.session.next_timeout())
            }
            None => {
                self.scratch.push(events);
                return;
            }
        };
        self.note_timeout(deadline);
        for ev in events.drain(..) {
            match ev {
                SessionEvent::Transmit { from, to, data } => {
                    self.outbox.push(Datagram { from, to, data, origin: None, rtmp: false })
                }
                SessionEvent::Rtp(packet) => {
                    self.stats.rtp_packets_in += 1;
                    if let Some(e) = self.sessions.get_mut(&id) {
                        e.packets += 1;
                        e.bytes += packet.payload.len() as u64;
                        let k = (packet.kind() == sfumato_media::packet::TrackKind::Video) as usize;
                        if !e.tracks_started[k] {
                            e.tracks_started[k] = true;
                            let kind = ["audio", "video"][k];
                            let data = serde_json::json!({ "kind": kind, "codec": format!("{:?}", packet.codec) });
                            self.emit_session(id, "track.started", data);
                        }
                    }
                    self.fan_out(room, packet, now);
                }
                SessionEvent::KeyframeRequested => {
                    let home = room.home_core(self.cores);
                    self.send_control(home, ControlMsg::KeyframeRequest { room }, now);
                }
                SessionEvent::Feedback(f) => self.count_feedback(f),
                SessionEvent::BitrateEstimate(bps) => self.viewer_bitrate(room, id, bps, now),
                SessionEvent::Connected => {
                    tracing::info!(core = self.core, session = id.0, ?role, "session connected");
                    if role == Role::Viewer {
                        // Start the new viewer on a fresh keyframe instead of waiting for the next one.
                        let home = room.home_core(self.cores);
                        self.send_control(home, ControlMsg::KeyframeRequest { room }, now);
                        // An RTMP room can't produce one: its home core replays the cached GOP instead.
                        self.send_control(home, ControlMsg::GopReplay { room, viewer: id }, now);
                    }
                }
            }
        }
        self.scratch.push(events);
    }

    /// Hands a publisher packet to every core with viewers of the room, once per core.
    fn fan_out(&mut self, room: RoomKey, packet: ForwardedPacket, now: Instant) {
        // RTMP packets are marked so viewer cores account their latency separately.
        let rtmp = !self.external.is_empty() && self.external.get(&room).is_some_and(External::is_rtmp);
        let (cores, format_changed) = self.router.route(room, &packet);
        let mut local = false;
        for &core in cores {
            if core == self.core {
                local = true;
            } else if core == self.cores {
                // The cluster (`core_cluster.rs`): one copy for core 0, whatever the number of subscribing nodes.
                self.cluster.cascade_out.push((room, packet.clone()));
            } else {
                self.media_out.push((core, MediaMsg::Forward { room, packet: packet.clone(), rtmp }));
            }
        }
        if local {
            self.deliver_local(room, &packet, now, rtmp);
        }
        if format_changed {
            // The cluster gossips the room's H.264 profile for viewers joining on other nodes.
            self.cluster_sync(room);
        }
    }

    /// Writes a packet to every viewer of the room on this core. The viewers are polled later, once per
    /// batch of packets, by [`poll_written`](Self::poll_written).
    fn deliver_local(&mut self, room: RoomKey, packet: &ForwardedPacket, now: Instant, rtmp: bool) {
        let mut keyframe_wanted = false;
        for id in self.viewers.viewers(room) {
            let Some(entry) = self.sessions.get_mut(id) else { continue };
            match entry.session.write_forwarded(packet, now) {
                Ok(()) => {
                    self.stats.rtp_packets_forwarded += 1;
                    self.stats.rtp_bytes_forwarded += packet.payload.len() as u64;
                    entry.packets += 1;
                    entry.bytes += packet.payload.len() as u64;
                    if entry.written_since.is_none() {
                        entry.written_since = Some(packet.received_at);
                        entry.written_rtmp = rtmp;
                        self.written.push(*id);
                    }
                }
                Err(skip) => {
                    self.stats.rtp_packets_skipped += 1;
                    if skip == WriteSkip::Rewrite(Skip::AwaitingKeyframe) && entry.session.should_ask_keyframe(now) {
                        keyframe_wanted = true;
                    }
                }
            }
        }
        if keyframe_wanted {
            let home = room.home_core(self.cores);
            self.send_control(home, ControlMsg::KeyframeRequest { room }, now);
        }
    }

    /// Polls up to `max` of the viewers written to since they were last polled, queueing their SRTP
    /// datagrams in `outbox`; `true` if more are waiting. The shell calls it once per batch of input
    /// (datagrams, ring messages) and sends each chunk before polling the next, so the first viewers'
    /// datagrams leave while the last ones' are still being built.
    pub fn poll_written(&mut self, now: Instant, max: usize) -> bool {
        if self.written.is_empty() {
            return false;
        }
        let mut events = self.scratch.pop().unwrap_or_default();
        let end = self.written_next.saturating_add(max).min(self.written.len());
        while self.written_next < end {
            let id = self.written[self.written_next];
            self.written_next += 1;
            let Some(entry) = self.sessions.get_mut(&id) else { continue };
            let origin = entry.written_since.take();
            let rtmp = std::mem::take(&mut entry.written_rtmp);
            entry.session.poll(now, &mut events);
            let room = entry.room;
            let t = entry.session.next_timeout();
            self.note_timeout(t);
            let mut keyframe_wanted = false;
            let mut estimate = None;
            for ev in events.drain(..) {
                match ev {
                    SessionEvent::Transmit { from, to, data } => self.outbox.push(Datagram { from, to, data, origin, rtmp }),
                    SessionEvent::KeyframeRequested => keyframe_wanted = true,
                    SessionEvent::Feedback(f) => self.count_feedback(f),
                    SessionEvent::BitrateEstimate(bps) => estimate = Some(bps),
                    SessionEvent::Rtp(_) | SessionEvent::Connected => {}
                }
            }
            if let Some(bps) = estimate {
                self.viewer_bitrate(room, id, bps, now);
            }
            if keyframe_wanted {
                let home = room.home_core(self.cores);
                self.send_control(home, ControlMsg::KeyframeRequest { room }, now);
            }
        }
        self.scratch.push(events);
        if self.written_next < self.written.len() {
            return true;
        }
        // Keep the allocation for the next batch.
        self.written.clear();
        self.written_next = 0;
        false
    }

    // ---- bitrate feedback (`bitrate.rs`) -------------------------------------------------------------------

    /// A local viewer's bandwidth estimate: the room's local minimum goes to the home core (throttled).
    fn viewer_bitrate(&mut self, room: RoomKey, viewer: SessionId, bps: u64, now: Instant) {
        self.bitrate.entry(room).or_default().viewers.set(viewer.0, bps, now);
        self.send_bitrate_hint(room, now);
    }

    fn send_bitrate_hint(&mut self, room: RoomKey, now: Instant) {
        let Some(r) = self.bitrate.get_mut(&room) else { return };
        let Some(bps) = r.viewers.min_any() else { return };
        if r.to_home.should_send(bps, now) {
            let home = room.home_core(self.cores);
            self.send_control(home, ControlMsg::BitrateHint { room, bps, core: self.core }, now);
        }
    }

    /// Home core: a core's (or a subscribing node's) minimum for a room homed here.
    pub(crate) fn bitrate_hint(&mut self, room: RoomKey, from: HintFrom, bps: u64, now: Instant) {
        self.bitrate.entry(room).or_default().reporters.set(from, bps, now);
        self.apply_bitrate(room, now);
    }

    /// Home core: asks the room's publisher for the reporters' minimum — REMB to a WebRTC publisher, the
    /// upstream node for a cascaded room (through core 0); an RTMP publisher can't be told.
    fn apply_bitrate(&mut self, room: RoomKey, now: Instant) {
        let Some(r) = self.bitrate.get_mut(&room) else { return };
        let Some(bps) = r.reporters.min(now) else { return };
        if let Some(ext) = self.external.get(&room) {
            if ext.is_cascade() && r.to_publisher.should_send(bps, now) {
                self.cluster.out.push(crate::cluster_msg::ClusterCtl::BitrateUp { room, bps });
            }
            return;
        }
        let Some((publisher, _)) = self.router.publisher(room) else { return };
        let Some(e) = self.sessions.get_mut(&publisher) else { return };
        if !r.to_publisher.should_send(bps, now) {
            return;
        }
        if e.session.request_remb(bps) {
            self.stats.bitrate_hints_sent += 1;
            tracing::debug!(core = self.core, room = %e.room_name, bps, "REMB to publisher");
            self.drain_session(publisher, now);
        } else {
            // No video stream yet: try again with the next hint.
            r.to_publisher.reset();
        }
    }

    /// Every 250 ms: sends held-back changes (a viewer left, a hint came within the interval), refreshes the
    /// home core's copy of steady values (it expires them) and forgets rooms without values.
    fn bitrate_sweep(&mut self, now: Instant) {
        if self.bitrate.is_empty() || now.saturating_duration_since(self.last_bitrate_sweep) < std::time::Duration::from_millis(250) {
            return;
        }
        self.last_bitrate_sweep = now;
        let mut rooms: Vec<(RoomKey, bool, bool)> = Vec::new();
        self.bitrate.retain(|room, r| {
            let local = r.viewers.min_any();
            let remote = r.reporters.min(now);
            // `should_send` decides: a changed value after the interval, a steady one every refresh interval.
            let to_home = local.is_some();
            let to_publisher = remote.is_some_and(|b| r.to_publisher.pending(b));
            if to_home || to_publisher {
                rooms.push((*room, to_home, to_publisher));
            }
            !r.is_idle()
        });
        for (room, to_home, to_publisher) in rooms {
            if to_home {
                self.send_bitrate_hint(room, now);
            }
            if to_publisher {
                self.apply_bitrate(room, now);
            }
        }
    }

    fn count_feedback(&mut self, f: sfumato_media::webrtc::FeedbackDelta) {
        self.stats.nacks_received += f.nacks_received;
        self.stats.rtp_retransmitted += f.retransmitted;
        self.stats.rtp_retransmissions_refused += f.retransmissions_refused;
        self.stats.keyframe_requests_received += f.keyframe_requests_received;
        self.stats.nacks_sent += f.nacks_sent;
    }

    fn room_changes(&mut self, changes: &[RoomChange]) {
        for c in changes {
            let (kind, name) = match c {
                RoomChange::Created(_, name) => ("room.created", name),
                RoomChange::Destroyed(_, name) => ("room.destroyed", name),
            };
            tracing::info!(core = self.core, room = %name, "{kind}");
            self.events.emit(EventRecord {
                kind,
                node: self.events.node.to_string(),
                room: name.clone(),
                peer: None,
                session: None,
                ts_ms: now_ms(),
                data: serde_json::Value::Null,
            });
        }
    }

    fn emit_session(&self, id: SessionId, kind: &'static str, data: serde_json::Value) {
        if !self.events.is_enabled() {
            return;
        }
        let Some(e) = self.sessions.get(&id) else { return };
        self.events.emit(EventRecord {
            kind,
            node: self.events.node.to_string(),
            room: e.room_name.clone(),
            peer: e.peer.clone(),
            session: Some(format!("{:016x}", id.0)),
            ts_ms: now_ms(),
            data,
        });
    }

    /// Emits `session.stats` for every session, every [`STATS_INTERVAL`].
    fn report_stats(&mut self, now: Instant) {
        if !self.events.is_enabled() || now.saturating_duration_since(self.last_stats_report) < STATS_INTERVAL {
            return;
        }
        self.last_stats_report = now;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(e) = self.sessions.get_mut(&id) else { continue };
            let (p0, b0, t0) = e.reported;
            let secs = now.saturating_duration_since(t0).as_secs_f64().max(0.001);
            let quality = e.session.link_quality();
            let data = serde_json::json!({
                "role": role_name(e.session.role()),
                "connected": e.session.is_connected(),
                "packets": e.packets,
                "bytes": e.bytes,
                "packets_per_s": ((e.packets - p0) as f64 / secs).round(),
                "bitrate_bps": (((e.bytes - b0) * 8) as f64 / secs).round(),
                "rtt_ms": quality.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "loss": quality.loss,
            });
            e.reported = (e.packets, e.bytes, now);
            self.emit_session(id, "session.stats", data);
        }
    }

    fn remove_session(&mut self, id: SessionId, reason: &str, now: Instant) {
        if let Some(e) = self.sessions.get(&id) {
            let role = e.session.role();
            let started = e.tracks_started;
            for (i, kind) in ["audio", "video"].iter().enumerate() {
                if started[i] {
                    self.emit_session(id, "track.stopped", serde_json::json!({ "kind": kind }));
                }
            }
            self.emit_session(id, "peer.left", serde_json::json!({ "role": role_name(role), "reason": reason }));
        }
        let Some(entry) = self.sessions.remove(&id) else { return };
        self.by_ufrag.remove(entry.session.local_ufrag());
        for addr in &entry.remote_addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        let mut changes = Vec::new();
        match entry.session.role() {
            Role::Publisher => {
                self.router.unpublish(entry.room, id, &mut changes);
                self.stats.publishers = self.stats.publishers.saturating_sub(1);
            }
            Role::Viewer => {
                if let Some(r) = self.bitrate.get_mut(&entry.room) {
                    r.viewers.remove(&id.0);
                }
                if self.viewers.remove(entry.room, id) {
                    let home = entry.room.home_core(self.cores);
                    self.send_control(home, ControlMsg::ViewerCoreLeft { room: entry.room, core: self.core }, now);
                }
                self.stats.viewers = self.stats.viewers.saturating_sub(1);
            }
        }
        self.room_changes(&changes);
        self.cluster_sync(entry.room);
        self.stats.sessions_closed += 1;
        tracing::info!(core = self.core, session = id.0, role = ?entry.session.role(), room = %entry.room_name, reason, "session closed");
    }
}

/// A resource's ETag (without quotes): its path segment, plus the ICE generation once ICE restarted.
pub fn etag_of(id: ResourceId, ice_generation: u32) -> String {
    if ice_generation == 0 {
        id.to_path_segment()
    } else {
        format!("{}-{ice_generation}", id.to_path_segment())
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Publisher => "publisher",
        Role::Viewer => "viewer",
    }
}

fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(buf)
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A WHEP viewer's offer: recvonly VP8 video and Opus audio.
    const VIEWER_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=rtpmap:96 VP8/90000\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\na=rtcp-mux\r\n\
        a=rtpmap:111 opus/48000/2\r\n";

    fn exact_earliest(st: &CoreState) -> Option<Instant> {
        st.sessions.values().map(|e| e.session.next_timeout()).min()
    }

    #[test]
    fn due_timeouts_are_driven_at_their_deadline_not_before() {
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let mut st = CoreState::new(0, 1, vec![addr], None, EventBus::disabled("test"));
        let t0 = Instant::now();
        assert!(!st.run_due_timeouts(t0), "no session, nothing due");
        assert_eq!(st.earliest_timeout, None);

        let offer =
            OfferRequest { role: Role::Viewer, room: "r".into(), sdp: VIEWER_OFFER.into(), owner: None, peer: None };
        st.create_session(&offer, None, t0).expect("a viewer session");
        let bound = st.earliest_timeout.expect("the new session's deadline is noted");
        assert!(Some(bound) <= exact_earliest(&st), "a lower bound of every session's deadline");

        st.run_due_timeouts(t0);
        let deadline = st.earliest_timeout.expect("one session, one deadline");
        assert_eq!(Some(deadline), exact_earliest(&st), "made exact when due timeouts run");
        assert!(deadline > t0, "the session was driven past its first deadline");
        assert!(!st.run_due_timeouts(deadline - Duration::from_nanos(1)), "not due before its deadline");
        assert!(st.run_due_timeouts(deadline), "due at its deadline");
        assert!(st.earliest_timeout.is_some_and(|e| e > deadline), "and driven past it");
    }
}
