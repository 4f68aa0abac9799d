//! The IO shell of one core: its UDP sockets, its rings, its timer, and the request/reply plumbing the HTTP
//! handlers use to reach sessions on other cores.
//!
//! Every task here follows the same rhythm: borrow [`CoreState`] briefly, let it react, release it, then
//! [`CoreShell::flush`] what it queued (datagrams with one `sendmmsg` per batch, messages to other cores).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::poll_once;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::UdpSocket;
use sfumato_engine::{CoreLinks, WakeTimer};
use sfumato_net::udp::{send_batch_nonblocking, BatchResult, GsoSender, Outgoing, RecvBatch};

use sfumato_media::packet::{ForwardedPacket, PayloadParams};
use sfumato_media::room::RoomKey;
use sfumato_media::webrtc::Role;

use crate::core_state::{CoreState, Datagram};
use crate::auth::Authority;
use crate::messages::{ControlMsg, Created, MediaMsg, OfferError, OfferRequest, ResourceId, ResourceOp, ResourceOutcome};
use crate::stats::CoreStats;

/// How long an HTTP handler waits for another core to answer.
const CROSS_CORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams taken from a socket per wake-up beyond the first.
const RECV_BATCH: usize = 32;
/// At most this many `recvmmsg` of [`RECV_BATCH`] per RTCP lane per drain (256 datagrams): a flood of
/// RTCP-looking garbage waits in (and overflows) the lane's kernel buffer instead of holding up the media.
/// Drains happen on every media wake-up (~70/s for one 30 fps publisher), so a port with media takes ~18k RTCP
/// datagrams a second; a core whose only wake-up is its tick, ~5k.
const LANE_ROUNDS: usize = 8;
/// Viewers polled per send in [`CoreShell::flush`]: the first chunk's datagrams leave while the rest are
/// built (lower latency for all but the last chunk), at the cost of one more `sendmmsg` per chunk.
const POLL_CHUNK: usize = 16;
/// Bounds of the timer task's sleep. str0m's deadlines of 50 viewers fall a few ms apart, so waking for each
/// cost ~120 reactor park/unpark cycles a second; instead, due timeouts are also served after every burst of
/// datagrams (`udp_loop`), and the timer only catches what no datagram woke the core for: at most 20 ms late
/// (str0m's tightest periodic work, TWCC feedback and NACKs, runs every 50 and 33 ms). A datagram wake-up
/// also does the tick's own work when it is due (every [`TICK_MAX`]) and, once the timer is less than half
/// of [`TICK_MAX`] away, pushes it back to [`TICK_MAX`], so while datagrams keep coming the timer never fires
/// (each of its wake-ups is another park/unpark); a deadline is at most 50 ms late if the datagrams then stop.
/// Fan-out 50 on one core, five interleaved pairs: parks 182 → 145/s, 3405 → 3240 ns per packet (timer
/// sleeping 50 ms while datagrams drive the timeouts); pushing it back removed the remaining ~17 timer
/// wake-ups a second. The timer is a [`WakeTimer`] (timerfd), not a glommio `Timer`: glommio arms and
/// cancels its next timer around every park, two `io_uring_enter` calls each time.
const TICK_MIN: Duration = Duration::from_millis(20);
const TICK_MAX: Duration = Duration::from_millis(50);
/// The timer's sleep on a core with nothing to drive (no sessions, no bitrate hints to relay): only the
/// published load needs refreshing, so an idle core wakes once a second instead of 20 times (each wake-up
/// is a reactor park/unpark, ~50 µs of CPU on the test VM). The first flush that leaves work behind (a new
/// session, a relayed hint) pulls the timer back to [`TICK_MIN`].
const TICK_IDLE: Duration = Duration::from_secs(1);

enum Reply {
    Offer(Result<Created, OfferError>),
    Resource(ResourceOutcome),
    Stats(CoreStats),
    RtmpPublish(Result<u64, OfferError>),
    RoomVideo(Option<PayloadParams>),
}

/// One core's load, written by that core on every timer tick (never on the packet path), read by HTTP
/// handlers to place viewers on the least-loaded core and by the cluster shell for the gossiped node load.
/// The only state cores share outside the rings.
#[derive(Default)]
pub struct CoreLoad {
    pub sessions: AtomicUsize,
    /// UDP bytes received + sent by the core since start (media bandwidth = its rate of change).
    pub media_bytes: AtomicU64,
}

pub type CoreLoads = Arc<Vec<CoreLoad>>;

pub struct CoreShell {
    pub state: RefCell<CoreState>,
    control: CoreLinks<ControlMsg>,
    media: CoreLinks<MediaMsg>,
    sockets: Vec<(SocketAddr, Rc<UdpSocket>)>,
    /// The RTCP lanes of the media sockets that have one (`sfumato_net::rtcp_lane`): drained, never waited
    /// on, by [`CoreShell::drain_rtcp_lanes`] whenever something else woke the core, and on the tick.
    rtcp_lanes: Vec<(SocketAddr, std::net::UdpSocket)>,
    lane_batch: RefCell<RecvBatch>,
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_req: Cell<u64>,
    loads: CoreLoads,
    pub auth: Authority,
    spare_outbox: RefCell<Vec<Datagram>>,
    /// Per media socket: the UDP GSO sender with its reusable buffers, or `None` once the kernel refused GSO
    /// on that socket (then datagrams go one by one through `sendmmsg`).
    gso: RefCell<Vec<Option<GsoSender>>>,
    /// `sfumato media`: this core's end of the cluster rings (`cluster_shell.rs`), set once at startup.
    pub cluster: OnceCell<Weak<crate::cluster_shell::ClusterPort>>,
    /// When a datagram wake-up last drove the due timeouts.
    timeouts_driven: Cell<Instant>,
    /// When [`CoreShell::tick`] last ran.
    last_tick: Cell<Instant>,
    /// The timer task's timer, made by `timer_loop` on the executor; datagram wake-ups push it back.
    tick_timer: OnceCell<WakeTimer>,
    /// Set if the timerfd can't be used (not expected on Linux): the timer task then ticks on a glommio timer
    /// every [`TICK_MIN`], woken through `tick_fallback_waker` if it was waiting on the timerfd.
    tick_fallback: Cell<bool>,
    tick_fallback_waker: RefCell<Option<std::task::Waker>>,
    /// The timer is armed for [`TICK_IDLE`]: the next flush that leaves the core busy re-arms it sooner.
    tick_idle: Cell<bool>,
}

impl CoreShell {
    pub fn new(
        state: CoreState,
        control: CoreLinks<ControlMsg>,
        media: CoreLinks<MediaMsg>,
        sockets: Vec<(SocketAddr, Rc<UdpSocket>)>,
        rtcp_lanes: Vec<(SocketAddr, std::net::UdpSocket)>,
        loads: CoreLoads,
        auth: Authority,
    ) -> Rc<Self> {
        let gso = RefCell::new(sockets.iter().map(|_| Some(GsoSender::default())).collect());
        Rc::new(Self {
            state: RefCell::new(state),
            control,
            media,
            sockets,
            rtcp_lanes,
            lane_batch: RefCell::new(RecvBatch::new(RECV_BATCH, 2048)),
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(1),
            loads,
            auth,
            spare_outbox: RefCell::new(Vec::new()),
            gso,
            cluster: OnceCell::new(),
            timeouts_driven: Cell::new(Instant::now()),
            last_tick: Cell::new(Instant::now()),
            tick_timer: OnceCell::new(),
            tick_fallback: Cell::new(false),
            tick_fallback_waker: RefCell::new(None),
            tick_idle: Cell::new(false),
        })
    }

    pub fn core(&self) -> usize {
        self.control.core()
    }

    /// The local addresses of this core's media sockets.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }

    pub fn cores(&self) -> usize {
        self.control.cores()
    }

    /// Starts the socket, ring and timer tasks. Returns when they are spawned.
    pub fn start(
        self: &Rc<Self>,
        control_rx: Vec<(usize, ConnectedReceiver<ControlMsg>)>,
        media_rx: Vec<(usize, ConnectedReceiver<MediaMsg>)>,
    ) {
        for (local, sock) in self.sockets.clone() {
            let me = self.clone();
            glommio::spawn_local(async move { me.udp_loop(local, sock).await }).detach();
        }
        for (_, rx) in control_rx {
            let me = self.clone();
            glommio::spawn_local(async move { me.control_loop(rx).await }).detach();
        }
        for (_, rx) in media_rx {
            let me = self.clone();
            glommio::spawn_local(async move { me.media_loop(rx).await }).detach();
        }
        let me = self.clone();
        glommio::spawn_local(async move { me.timer_loop().await }).detach();
    }

    async fn udp_loop(self: Rc<Self>, local: SocketAddr, sock: Rc<UdpSocket>) {
        let mut buf = vec![0u8; 2048];
        let mut batch = RecvBatch::new(RECV_BATCH, 2048);
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, remote)) => {
                    // Whatever else already waits in the socket (the rest of a video frame, usually) is taken
                    // with one recvmmsg and handled before a single flush: viewers are then polled and sent
                    // to once per burst instead of once per packet.
                    let more = batch.recv_nonblocking(sock.as_raw_fd());
                    let now = Instant::now();
                    {
                        let mut st = self.state.borrow_mut();
                        st.on_datagram(now, remote, local, &buf[..n]);
                        for (remote, data) in batch.iter(more) {
                            st.on_datagram(now, remote, local, data);
                        }
                    }
                    self.flush_media().await;
                    self.drive_due_timeouts().await;
                }
                Err(e) => {
                    tracing::warn!(core = self.core(), %local, error = %e, "udp receive failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn control_loop(self: Rc<Self>, rx: ConnectedReceiver<ControlMsg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                ControlMsg::OfferDone { req, result } => self.complete(req, Reply::Offer(result)),
                ControlMsg::ResourceDone { req, outcome } => self.complete(req, Reply::Resource(outcome)),
                ControlMsg::StatsDone { req, stats } => self.complete(req, Reply::Stats(stats)),
                ControlMsg::RtmpPublishDone { req, result } => self.complete(req, Reply::RtmpPublish(result)),
                ControlMsg::RoomVideoDone { req, video } => self.complete(req, Reply::RoomVideo(video)),
                other => {
                    self.state.borrow_mut().on_control(other, Instant::now());
                    self.flush().await;
                }
            }
        }
    }

    async fn media_loop(self: Rc<Self>, rx: ConnectedReceiver<MediaMsg>) {
        let mut batch = Vec::with_capacity(64);
        while let Some(msg) = rx.recv().await {
            batch.push(msg);
            // Take whatever else is already queued before paying for a flush.
            while batch.len() < 64 {
                match poll_once(rx.recv()).await {
                    Some(Some(msg)) => batch.push(msg),
                    _ => break,
                }
            }
            let now = Instant::now();
            {
                let mut st = self.state.borrow_mut();
                for msg in batch.drain(..) {
                    st.on_media(msg, now);
                }
            }
            self.flush_media().await;
        }
    }

    /// [`CoreShell::flush`] for a wake-up that brought media (publisher datagrams, the media ring, cluster
    /// ingest): the media leaves first, then the RTCP the lanes held is read, and what it asks for
    /// (retransmissions, keyframe requests) leaves in a second flush.
    pub async fn flush_media(&self) {
        self.flush().await;
        if self.drain_rtcp_lanes(Instant::now()) {
            self.flush().await;
        }
    }

    /// Hands the RTCP waiting in the lanes to the state (never waits); returns whether there was any (the
    /// caller then flushes what it queued). Called after every wake-up's media has left and on the tick, so
    /// RTCP is at most a tick late ([`TICK_MAX`]) and, while media flows, as late as the next publisher
    /// packet (≤ 20 ms with Opus) — and never delays the media it rides behind.
    fn drain_rtcp_lanes(&self, now: Instant) -> bool {
        if self.rtcp_lanes.is_empty() {
            return false;
        }
        let mut any = false;
        let mut batch = self.lane_batch.borrow_mut();
        for (local, lane) in &self.rtcp_lanes {
            for _ in 0..LANE_ROUNDS {
                let n = batch.recv_nonblocking(lane.as_raw_fd());
                if n == 0 {
                    break;
                }
                any = true;
                let mut st = self.state.borrow_mut();
                st.stats.udp_rtcp_lane_in += n as u64;
                for (remote, data) in batch.iter(n) {
                    st.on_datagram(now, remote, *local, data);
                }
                if n < RECV_BATCH {
                    break;
                }
            }
        }
        any
    }

    /// After a wake-up's media left: the timeouts that fell due meanwhile ride on this wake-up, and so does
    /// the tick when it is due; the timer is pushed back (it only has to catch the silence after the datagrams).
    async fn drive_due_timeouts(&self) {
        let now = Instant::now();
        self.timeouts_driven.set(now);
        if now.saturating_duration_since(self.last_tick.get()) >= TICK_MAX {
            self.tick(now).await;
        } else if self.state.borrow_mut().run_due_timeouts(now) {
            self.flush().await;
        }
        // Pushed back only when it got close: each push is a syscall, and ~100 wake-ups a second need
        // only a few.
        if self.tick_timer.get().and_then(WakeTimer::deadline).is_none_or(|d| d < now + TICK_MAX / 2) {
            self.arm_tick(TICK_MAX);
        }
    }

    fn arm_tick(&self, after: Duration) {
        let Some(timer) = self.tick_timer.get() else { return };
        if self.tick_fallback.get() {
            return;
        }
        match timer.arm(after) {
            Ok(()) => self.tick_idle.set(after > TICK_MAX),
            Err(e) => {
                tracing::error!(core = self.core(), error = %e, "arming the tick timer failed; ticking every 20 ms on a glommio timer from now on");
                self.fall_back_to_glommio_tick();
            }
        }
    }

    fn fall_back_to_glommio_tick(&self) {
        self.tick_fallback.set(true);
        self.tick_idle.set(false);
        if let Some(waker) = self.tick_fallback_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves once the tick has fallen back to a glommio timer.
    async fn tick_fell_back(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.tick_fallback.get() {
                std::task::Poll::Ready(())
            } else {
                *self.tick_fallback_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    async fn timer_loop(self: Rc<Self>) {
        match WakeTimer::new() {
            Ok(t) => {
                let timer = self.tick_timer.get_or_init(|| t);
                self.arm_tick(TICK_MIN);
                let mut failures = 0u32;
                while !self.tick_fallback.get() {
                    let expired = futures_lite::future::or(async { Some(timer.expired().await) }, async {
                        self.tick_fell_back().await;
                        None
                    })
                    .await;
                    match expired {
                        Some(Ok(())) => failures = 0,
                        Some(Err(e)) if failures < 2 => {
                            failures += 1;
                            tracing::warn!(core = self.core(), error = %e, "tick timer read failed; ticking in 20 ms");
                            glommio::timer::sleep(TICK_MIN).await;
                        }
                        Some(Err(e)) => {
                            tracing::error!(core = self.core(), error = %e, "tick timer read failed 3 times; ticking every 20 ms on a glommio timer from now on");
                            self.fall_back_to_glommio_tick();
                        }
                        None => {}
                    }
                    self.tick(Instant::now()).await;
                }
            }
            Err(e) => {
                tracing::warn!(core = self.core(), error = %e, "no timerfd; ticking every 20 ms on a glommio timer");
                self.fall_back_to_glommio_tick();
            }
        }
        loop {
            glommio::timer::sleep(TICK_MIN).await;
            self.tick(Instant::now()).await;
        }
    }

    /// The periodic work: due str0m timeouts, dead sessions, stats, bitrate hints, this core's published
    /// load. Re-arms the timer for the next.
    async fn tick(&self, now: Instant) {
        self.drain_rtcp_lanes(now);
        let next = self.state.borrow_mut().on_tick(now);
        self.last_tick.set(now);
        {
            let st = self.state.borrow();
            let load = &self.loads[self.core()];
            load.sessions.store(st.session_count(), Ordering::Relaxed);
            load.media_bytes.store(st.stats.udp_bytes_in + st.stats.udp_bytes_out, Ordering::Relaxed);
        }
        let idle = self.state.borrow().is_idle();
        let wait = tick_sleep(
            idle,
            now.saturating_duration_since(self.timeouts_driven.get()),
            next.map(|t| t.saturating_duration_since(now)),
        );
        self.arm_tick(wait);
        self.flush().await;
    }

    fn complete(&self, req: u64, reply: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&req) {
            let _ = tx.try_send(reply);
        }
    }

    /// Performs everything the state queued: media to other cores first (they work on it in parallel),
    /// then this core's viewers' datagrams — polled and sent [`POLL_CHUNK`] viewers at a time — then
    /// control messages.
    pub async fn flush(&self) {
        // First, before anything below awaits: a core that was idle and now has work (a new session's
        // handshake deadlines) gets its timer back from TICK_IDLE.
        if self.tick_idle.get() && !self.state.borrow().is_idle() {
            self.arm_tick(TICK_MIN);
        }
        let media = std::mem::take(&mut self.state.borrow_mut().media_out);
        if !media.is_empty() {
            let mut full = 0;
            for (core, msg) in media {
                if self.media.try_send(core, msg).is_err() {
                    full += 1;
                }
            }
            self.state.borrow_mut().stats.ring_full_drops += full;
        }
        loop {
            let (mut outbox, more) = {
                let mut st = self.state.borrow_mut();
                let more = st.poll_written(Instant::now(), POLL_CHUNK);
                let spare = std::mem::take(&mut *self.spare_outbox.borrow_mut());
                (std::mem::replace(&mut st.outbox, spare), more)
            };
            if !outbox.is_empty() {
                self.send_datagrams(&outbox).await;
                for d in outbox.drain(..) {
                    sfumato_media::datagram_buffers::give(d.data);
                }
            }
            *self.spare_outbox.borrow_mut() = outbox;
            if !more {
                break;
            }
        }
        let control = std::mem::take(&mut self.state.borrow_mut().control_out);
        for (core, msg) in control {
            if let Err(e) = self.control.send(core, msg).await {
                tracing::warn!(core = self.core(), to = core, error = %e, "control message lost");
            }
        }
        if let Some(port) = self.cluster.get().and_then(Weak::upgrade) {
            port.flush_state(&self.state).await;
        }
    }

    async fn send_datagrams(&self, outbox: &[Datagram]) {
        let (mut sent, mut failed, mut bytes) = (0u64, 0u64, 0u64);
        let mut batch: Vec<Outgoing> = Vec::with_capacity(outbox.len());
        for (i, (local, sock)) in self.sockets.iter().enumerate() {
            batch.clear();
            batch.extend(outbox.iter().filter(|d| d.from == *local).map(|d| Outgoing { to: d.to, data: &d.data }));
            if batch.is_empty() {
                continue;
            }
            let mut res = BatchResult::default();
            let gso_on = {
                let mut senders = self.gso.borrow_mut();
                if let Some(sender) = senders[i].as_mut() {
                    let gso = sender.send(sock.as_raw_fd(), &batch);
                    res = gso.batch;
                    if gso.gso_unsupported {
                        senders[i] = None;
                        tracing::warn!(core = self.core(), %local, "UDP GSO refused by the kernel; sending datagram by datagram");
                    }
                }
                senders[i].is_some()
            };
            if !gso_on {
                let done = res.sent + res.failed;
                let more = send_batch_nonblocking(sock.as_raw_fd(), &batch[done..]);
                res.sent += more.sent;
                res.failed += more.failed;
            }
            sent += res.sent as u64;
            failed += res.failed as u64;
            // Bytes of what the kernel took; the rare refused datagram (skipped, counted in `failed`) is
            // somewhere in that prefix: count its share at the prefix's average size.
            let done = res.sent + res.failed;
            let prefix: u64 = batch[..done].iter().map(|d| d.data.len() as u64).sum();
            bytes += if res.failed == 0 { prefix } else { prefix * res.sent as u64 / done as u64 };
            // Socket buffer full: wait for room datagram by datagram.
            for d in &batch[done..] {
                match sock.send_to(d.data, d.to).await {
                    Ok(_) => {
                        sent += 1;
                        bytes += d.data.len() as u64;
                    }
                    Err(_) => failed += 1,
                }
            }
        }
        let unknown = outbox.iter().filter(|d| !self.sockets.iter().any(|(l, _)| *l == d.from)).count() as u64;
        let done = Instant::now();
        let mut st = self.state.borrow_mut();
        st.stats.udp_datagrams_out += sent;
        st.stats.udp_bytes_out += bytes;
        st.stats.udp_send_errors += failed + unknown;
        let CoreStats { forward_latency_us, rtmp_forward_latency_us, .. } = &mut st.stats;
        for d in outbox {
            if let Some(origin) = d.origin {
                // RTMP packets: from the FLV message's read (`rtmp_ingest.rs`); others: from the UDP arrival.
                let hist = if d.rtmp { &mut *rtmp_forward_latency_us } else { &mut *forward_latency_us };
                let us = done.saturating_duration_since(origin).as_micros().max(1) as u64;
                hist.get_or_insert_with(crate::stats::new_latency_histogram).saturating_record(us);
            }
        }
    }

    // ---- used by HTTP handlers --------------------------------------------------------------------------

    fn new_request(&self) -> (u64, glommio::channels::local_channel::LocalReceiver<Reply>) {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        (req, rx)
    }

    async fn await_reply(&self, req: u64, rx: glommio::channels::local_channel::LocalReceiver<Reply>) -> Option<Reply> {
        let reply = glommio::timer::timeout(CROSS_CORE_TIMEOUT, async { Ok(rx.recv().await) }).await.ok().flatten();
        self.pending.borrow_mut().remove(&req);
        reply
    }

    /// The core a new viewer should live on: the one with the fewest sessions.
    pub fn least_loaded_core(&self) -> usize {
        (0..self.cores()).min_by_key(|&c| (self.loads[c].sessions.load(Ordering::Relaxed), c != self.core())).unwrap_or(0)
    }

    /// Creates a session for an offer this node serves: a publisher on its room's home core, a viewer on
    /// the least-loaded core, told the room's current video format (its answer names the real H.264 profile).
    pub async fn place_offer(&self, offer: OfferRequest) -> Result<Created, OfferError> {
        let home = RoomKey::of(&offer.room).home_core(self.cores());
        match offer.role {
            Role::Publisher => self.offer(home, offer, None).await,
            Role::Viewer => {
                let mut video = self.room_video(home, RoomKey::of(&offer.room)).await;
                if video.is_none() {
                    // A room this node doesn't carry yet: what the cluster says about its video.
                    let gossiped = self.cluster.get().and_then(Weak::upgrade).and_then(|p| p.shared.room_h264(&offer.room));
                    video = gossiped.map(sfumato_media::webrtc::h264_params);
                }
                self.offer(self.least_loaded_core(), offer, video).await
            }
        }
    }

    /// The room's current video format, asked of its home core (None if unknown or the core is slow).
    async fn room_video(&self, home: usize, room: RoomKey) -> Option<PayloadParams> {
        if home == self.core() {
            return self.state.borrow().router_video_format(room);
        }
        let (req, rx) = self.new_request();
        if self.control.send(home, ControlMsg::RoomVideo { reply_to: self.core(), req, room }).await.is_err() {
            self.pending.borrow_mut().remove(&req);
            return None;
        }
        match self.await_reply(req, rx).await {
            Some(Reply::RoomVideo(video)) => video,
            _ => None,
        }
    }

    /// Creates a session on `core` (this one or another).
    async fn offer(&self, core: usize, offer: OfferRequest, room_video: Option<PayloadParams>) -> Result<Created, OfferError> {
        if core == self.core() {
            let res = self.state.borrow_mut().create_session(&offer, room_video.as_ref(), Instant::now());
            self.flush().await;
            return res;
        }
        let (req, rx) = self.new_request();
        let msg = ControlMsg::Offer { reply_to: self.core(), req, offer, room_video };
        if self.control.send(core, msg).await.is_err() {
            self.pending.borrow_mut().remove(&req);
            return Err(OfferError::Unavailable(format!("core {core} is not running")));
        }
        match self.await_reply(req, rx).await {
            Some(Reply::Offer(res)) => res,
            _ => Err(OfferError::Unavailable(format!("core {core} did not answer in time"))),
        }
    }

    /// DELETE/PATCH on a resource, wherever it lives.
    pub async fn resource(&self, id: ResourceId, op: ResourceOp, presented: Option<u64>) -> ResourceOutcome {
        let core = id.session.core();
        if core >= self.cores() {
            return ResourceOutcome::NotFound;
        }
        if core == self.core() {
            let outcome = self.state.borrow_mut().resource_op(id, op, presented, Instant::now());
            self.flush().await;
            return outcome;
        }
        let (req, rx) = self.new_request();
        let msg = ControlMsg::Resource { reply_to: self.core(), req, id, op, presented };
        if self.control.send(core, msg).await.is_err() {
            self.pending.borrow_mut().remove(&req);
            return ResourceOutcome::NotFound;
        }
        match self.await_reply(req, rx).await {
            Some(Reply::Resource(outcome)) => outcome,
            _ => ResourceOutcome::NotFound,
        }
    }

    // ---- used by RTMP connections (rtmp_ingest.rs) -------------------------------------------------------

    /// Registers an RTMP publisher of `room` on the room's home core. Returns its source id.
    pub async fn rtmp_publish(&self, room: &str) -> Result<u64, OfferError> {
        let core = RoomKey::of(room).home_core(self.cores());
        if core == self.core() {
            let res = self.state.borrow_mut().rtmp_publish_start(room);
            self.flush().await;
            return res;
        }
        let (req, rx) = self.new_request();
        let msg = ControlMsg::RtmpPublish { reply_to: self.core(), req, room: room.to_string() };
        if self.control.send(core, msg).await.is_err() {
            self.pending.borrow_mut().remove(&req);
            return Err(OfferError::Unavailable(format!("core {core} is not running")));
        }
        match self.await_reply(req, rx).await {
            Some(Reply::RtmpPublish(res)) => res,
            _ => Err(OfferError::Unavailable(format!("core {core} did not answer in time"))),
        }
    }

    /// Unregisters an RTMP publisher (never blocks on a reply).
    pub async fn rtmp_unpublish(&self, room: RoomKey, source: u64) {
        let core = room.home_core(self.cores());
        if core == self.core() {
            self.state.borrow_mut().rtmp_publish_stop(room, source);
            self.flush().await;
        } else if let Err(e) = self.control.send(core, ControlMsg::RtmpUnpublish { room, source }).await {
            tracing::warn!(core = self.core(), to = core, error = %e, "RTMP unpublish lost");
        }
    }

    /// Hands an RTMP publisher's packets to the room's home core, which fans them out. A full media ring
    /// drops and counts (`ring_full_drops`), like every forwarded packet.
    pub async fn rtmp_forward(&self, room: RoomKey, packets: &mut Vec<ForwardedPacket>) {
        let core = room.home_core(self.cores());
        if core == self.core() {
            {
                let now = Instant::now();
                let mut st = self.state.borrow_mut();
                for p in packets.drain(..) {
                    st.rtmp_packet(room, p, now);
                }
            }
            self.flush().await;
            return;
        }
        let mut full = 0;
        for packet in packets.drain(..) {
            if self.media.try_send(core, MediaMsg::RtmpPacket { room, packet }).is_err() {
                full += 1;
            }
        }
        if full > 0 {
            self.state.borrow_mut().stats.ring_full_drops += full;
        }
    }

    /// Node-wide statistics: this core's plus every other core's.
    pub async fn node_stats(&self) -> (CoreStats, Vec<CoreStats>) {
        let mut per_core = vec![CoreStats::default(); self.cores()];
        per_core[self.core()] = self.state.borrow().snapshot();
        for core in 0..self.cores() {
            if core == self.core() {
                continue;
            }
            let (req, rx) = self.new_request();
            if self.control.send(core, ControlMsg::StatsRequest { reply_to: self.core(), req }).await.is_ok() {
                if let Some(Reply::Stats(s)) = self.await_reply(req, rx).await {
                    per_core[core] = s;
                }
            }
        }
        let mut total = CoreStats::default();
        for s in &per_core {
            total.add(s);
        }
        (total, per_core)
    }
}

/// How long the timer task sleeps after a tick: [`TICK_IDLE`] on an idle core; [`TICK_MAX`] while datagram
/// wake-ups drive the timeouts (the last did so less than [`TICK_MIN`] ago); otherwise until the earliest
/// str0m deadline (`next_in`), within [`TICK_MIN`]..=[`TICK_MAX`].
fn tick_sleep(idle: bool, since_driven: Duration, next_in: Option<Duration>) -> Duration {
    if idle {
        TICK_IDLE
    } else if since_driven < TICK_MIN {
        TICK_MAX
    } else {
        next_in.unwrap_or(TICK_MAX).clamp(TICK_MIN, TICK_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_core_sleeps_a_second_busy_core_at_most_tick_max() {
        let ms = Duration::from_millis;
        assert_eq!(tick_sleep(true, ms(500), Some(ms(1))), TICK_IDLE);
        // Busy, datagrams drove the timeouts just now: they keep doing it, the timer only catches silence.
        assert_eq!(tick_sleep(false, ms(5), Some(ms(1))), TICK_MAX);
        // Busy and quiet: the earliest deadline, bounded.
        assert_eq!(tick_sleep(false, ms(100), Some(ms(30))), ms(30));
        assert_eq!(tick_sleep(false, ms(100), Some(ms(1))), TICK_MIN);
        assert_eq!(tick_sleep(false, ms(100), Some(ms(900))), TICK_MAX);
        assert_eq!(tick_sleep(false, ms(100), None), TICK_MAX);
    }
}
