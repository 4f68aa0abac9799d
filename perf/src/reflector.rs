//! The floor scenario's reflector: plain-UDP fan-out, no crypto, batched like the server.
//!
//! Why it exists: to say how close sfumato is to the machine's limit, the same 1→N fan-out is done with
//! nothing but syscalls. One thread (pinned where the server would run) takes the publisher's datagrams
//! with `recvmmsg` (up to [`BATCH`] per call) and writes each one to every viewer with `sendmmsg`
//! (up to [`BATCH`] messages per call, `MSG_DONTWAIT`, waiting for `POLLOUT` only when the socket buffer
//! is full) — the server's send path minus SRTP, RTP rewriting and routing.
//!
//! With [`SendMode::Gso`], consecutive datagrams of one receive batch that have the same size (a video
//! frame's packets) go to each viewer as one message with `UDP_SEGMENT`: the kernel splits it, so a
//! 4-packet frame to 50 viewers costs 50 messages instead of 200. That is what the server could do next.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::affinity;

/// Datagrams per `recvmmsg` and messages per `sendmmsg`, as in the server (`net/src/udp.rs`).
pub const BATCH: usize = 64;
/// Receive buffer per datagram.
const MAX_DATAGRAM: usize = 2048;
/// Linux accepts at most 64 segments (`UDP_MAX_SEGMENTS`) and < 64 KiB per GSO send.
pub const GSO_MAX_SEGMENTS: usize = 64;
pub const GSO_MAX_BYTES: usize = 65_000;
/// Socket buffers asked for (the server asks the same; the kernel caps them at `net.core.*mem_max`).
pub const SOCKET_BUFFER: usize = 4 << 20;
const SOL_UDP: libc::c_int = 17;

/// How the reflector writes to viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendMode {
    /// One message per datagram per viewer.
    Sendmmsg,
    /// One message per run of same-size datagrams per viewer, split by the kernel (`UDP_SEGMENT`).
    Gso,
}

/// What the reflector did so far (monotonic counters, read by the controller).
#[derive(Debug, Default)]
pub struct ReflectorCounters {
    pub packets_in: AtomicU64,
    pub recv_calls: AtomicU64,
    /// Datagrams (GSO segments included) the kernel accepted for viewers.
    pub forwarded: AtomicU64,
    pub send_calls: AtomicU64,
    /// `mmsghdr` entries sent (= forwarded without GSO).
    pub messages: AtomicU64,
    /// `sendmmsg` returned EAGAIN (socket buffer full) and the reflector waited for `POLLOUT`.
    pub would_block: AtomicU64,
    /// Messages the kernel refused (each loses its segments).
    pub send_errors: AtomicU64,
    /// The reflector thread's CPU time (user + system), updated after every batch.
    pub cpu_ns: AtomicU64,
}

/// A copy of [`ReflectorCounters`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReflectorSnapshot {
    pub packets_in: u64,
    pub recv_calls: u64,
    pub forwarded: u64,
    pub send_calls: u64,
    pub messages: u64,
    pub would_block: u64,
    pub send_errors: u64,
    pub cpu_ns: u64,
}

impl ReflectorCounters {
    pub fn snapshot(&self) -> ReflectorSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Acquire);
        ReflectorSnapshot {
            packets_in: r(&self.packets_in),
            recv_calls: r(&self.recv_calls),
            forwarded: r(&self.forwarded),
            send_calls: r(&self.send_calls),
            messages: r(&self.messages),
            would_block: r(&self.would_block),
            send_errors: r(&self.send_errors),
            cpu_ns: r(&self.cpu_ns),
        }
    }
}

impl ReflectorSnapshot {
    /// Counter differences `self - earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            recv_calls: self.recv_calls.saturating_sub(earlier.recv_calls),
            forwarded: self.forwarded.saturating_sub(earlier.forwarded),
            send_calls: self.send_calls.saturating_sub(earlier.send_calls),
            messages: self.messages.saturating_sub(earlier.messages),
            would_block: self.would_block.saturating_sub(earlier.would_block),
            send_errors: self.send_errors.saturating_sub(earlier.send_errors),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
        }
    }
}

/// A run of datagrams `[start, end)` of one receive batch that can go out as one GSO message: all but the
/// last are `segment` bytes, the last is at most `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoRun {
    pub start: usize,
    pub end: usize,
    pub segment: usize,
}

/// Splits datagram lengths into GSO runs (at most [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`] each).
pub fn gso_runs(lens: &[usize]) -> Vec<GsoRun> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lens.len() {
        let segment = lens[i];
        let mut total = segment;
        let mut j = i + 1;
        while j < lens.len() && j - i < GSO_MAX_SEGMENTS && lens[j] <= segment && total + lens[j] <= GSO_MAX_BYTES {
            total += lens[j];
            j += 1;
            if lens[j - 1] < segment {
                break; // a shorter datagram can only be the last segment
            }
        }
        out.push(GsoRun { start: i, end: j, segment });
        i = j;
    }
    out
}

/// A socket address in the form `sendmmsg` wants.
#[derive(Clone, Copy)]
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn from(a: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain data, large and aligned enough for sockaddr_in/_in6.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: see above; the write stays inside `storage`.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: see above.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self { storage, len: len as libc::socklen_t }
    }
}

/// Asks for big kernel buffers on `fd` (best effort, like the server).
pub fn set_buffers(fd: RawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: v is a valid c_int for the duration of the call.
        unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, &v as *const _ as *const libc::c_void, std::mem::size_of_val(&v) as libc::socklen_t);
        }
    }
}

/// The running reflector thread.
pub struct Reflector {
    addr: SocketAddr,
    counters: Arc<ReflectorCounters>,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Reflector {
    /// Binds `bind`, starts the thread (pinned to `cpu` if given) and forwards every datagram it receives
    /// to all of `viewers`. Fails if the socket can't be bound or the thread can't be pinned.
    pub fn spawn(bind: SocketAddr, viewers: Vec<SocketAddr>, mode: SendMode, cpu: Option<usize>) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(bind)?;
        set_buffers(socket.as_raw_fd(), SOCKET_BUFFER);
        // Wake up periodically to notice `stop`.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let counters = Arc::new(ReflectorCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let (c2, s2) = (counters.clone(), stop.clone());
        let join = std::thread::Builder::new().name("floor-reflector".into()).spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(e) = affinity::pin_current_thread(cpu) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            Loop::new(socket, &viewers, mode).run(&c2, &s2);
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { addr, counters, stop, join: Some(join) }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => Err(std::io::Error::other("the reflector thread exited before starting")),
        }
    }

    /// Where the publisher sends.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn snapshot(&self) -> ReflectorSnapshot {
        self.counters.snapshot()
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The reflector thread's state: receive buffers and per-batch scratch space, allocated once.
struct Loop {
    socket: UdpSocket,
    viewers: Vec<RawAddr>,
    mode: SendMode,
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    /// `recvmmsg` scratch: one full-size iovec and header per buffer.
    _recv_iovs: Vec<libc::iovec>,
    recv_msgs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    /// One iovec per received datagram, pointing into `bufs`.
    iovs: Vec<libc::iovec>,
    /// One `UDP_SEGMENT` control message per GSO run.
    cmsgs: Vec<[u64; 4]>,
    out: Vec<libc::mmsghdr>,
    /// Datagrams each entry of `out` carries.
    out_segments: Vec<u64>,
}

impl Loop {
    fn new(socket: UdpSocket, viewers: &[SocketAddr], mode: SendMode) -> Self {
        let mut bufs = vec![[0u8; MAX_DATAGRAM]; BATCH];
        let mut recv_iovs: Vec<libc::iovec> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: MAX_DATAGRAM }).collect();
        let recv_msgs = recv_iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; the iovec lives in `recv_iovs`, whose heap buffer never moves.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Self {
            socket,
            viewers: viewers.iter().map(|a| RawAddr::from(*a)).collect(),
            mode,
            bufs,
            _recv_iovs: recv_iovs,
            recv_msgs,
            lens: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            cmsgs: Vec::with_capacity(BATCH),
            out: Vec::with_capacity(BATCH),
            out_segments: Vec::with_capacity(BATCH),
        }
    }

    fn run(&mut self, c: &ReflectorCounters, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let n = self.recv_batch();
            if n > 0 {
                c.recv_calls.fetch_add(1, Ordering::Relaxed);
                c.packets_in.fetch_add(n as u64, Ordering::Relaxed);
                match self.mode {
                    SendMode::Sendmmsg => self.fan_out_plain(c),
                    SendMode::Gso => self.fan_out_gso(c),
                }
            }
            c.cpu_ns.store(affinity::thread_cpu_ns(), Ordering::Release);
        }
    }

    /// Blocks (up to the socket's read timeout) for at least one datagram, then takes what is queued.
    fn recv_batch(&mut self) -> usize {
        let fd = self.socket.as_raw_fd();
        // SAFETY: recv_msgs/recv_iovs point into `bufs` (see `new`), all valid for the call;
        // MSG_WAITFORONE blocks only for the first datagram.
        let n = unsafe {
            libc::recvmmsg(fd, self.recv_msgs.as_mut_ptr(), self.recv_msgs.len() as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n <= 0 {
            self.lens.clear();
            return 0; // timeout (EAGAIN), EINTR or a transient error: the caller checks `stop` and retries
        }
        let mut lens = [0usize; BATCH];
        for (l, m) in lens.iter_mut().zip(&self.recv_msgs[..n as usize]) {
            *l = (m.msg_len as usize).min(MAX_DATAGRAM);
        }
        self.load_lens(&lens[..n as usize]);
        n as usize
    }

    /// Sets the batch to the first `lens.len()` buffers with these lengths.
    fn load_lens(&mut self, lens: &[usize]) {
        self.lens.clear();
        self.lens.extend_from_slice(lens);
        self.iovs.clear();
        for (i, &len) in lens.iter().enumerate() {
            self.iovs.push(libc::iovec { iov_base: self.bufs[i].as_mut_ptr() as *mut libc::c_void, iov_len: len });
        }
    }

    /// Every datagram to every viewer, one message each.
    fn fan_out_plain(&mut self, c: &ReflectorCounters) {
        for i in 0..self.lens.len() {
            for v in 0..self.viewers.len() {
                let iov = &mut self.iovs[i] as *mut libc::iovec;
                self.push(v, iov, 1, None, 1, c);
            }
        }
        self.flush(c);
    }

    /// Every run of same-size datagrams to every viewer as one `UDP_SEGMENT` message.
    fn fan_out_gso(&mut self, c: &ReflectorCounters) {
        let runs = gso_runs(&self.lens);
        self.cmsgs.clear();
        self.cmsgs.resize(runs.len(), [0u64; 4]);
        for (r, run) in runs.iter().enumerate() {
            let segs = run.end - run.start;
            let control = if segs > 1 { Some(write_segment_cmsg(&mut self.cmsgs[r], run.segment as u16)) } else { None };
            for v in 0..self.viewers.len() {
                let iov = &mut self.iovs[run.start] as *mut libc::iovec;
                self.push(v, iov, segs, control, segs as u64, c);
            }
        }
        self.flush(c);
    }

    /// Queues one message to viewer `v`; sends when [`BATCH`] are queued.
    fn push(&mut self, v: usize, iov: *mut libc::iovec, iovlen: usize, control: Option<(*mut libc::c_void, usize)>, segments: u64, c: &ReflectorCounters) {
        // SAFETY: mmsghdr is plain data. The pointers (viewer address, iovecs, control buffer) live in
        // `self` and are not moved or resized before `flush` returns.
        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
        m.msg_hdr.msg_name = &mut self.viewers[v].storage as *mut _ as *mut libc::c_void;
        m.msg_hdr.msg_namelen = self.viewers[v].len;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = iovlen as _;
        if let Some((ptr, len)) = control {
            m.msg_hdr.msg_control = ptr;
            m.msg_hdr.msg_controllen = len as _;
        }
        self.out.push(m);
        self.out_segments.push(segments);
        if self.out.len() == BATCH {
            self.flush(c);
        }
    }

    /// `sendmmsg(MSG_DONTWAIT)` until every queued message is sent or refused; on a full socket buffer,
    /// waits for `POLLOUT` (the server would hand the rest to an async send instead).
    fn flush(&mut self, c: &ReflectorCounters) {
        let fd = self.socket.as_raw_fd();
        let mut off = 0;
        while off < self.out.len() {
            let rest = &mut self.out[off..];
            // SAFETY: every entry's pointers are valid (see `push`); the kernel only reads them.
            let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, libc::MSG_DONTWAIT) };
            c.send_calls.fetch_add(1, Ordering::Relaxed);
            if n > 0 {
                let n = n as usize;
                c.messages.fetch_add(n as u64, Ordering::Relaxed);
                c.forwarded.fetch_add(self.out_segments[off..off + n].iter().sum::<u64>(), Ordering::Relaxed);
                off += n;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock => {
                    c.would_block.fetch_add(1, Ordering::Relaxed);
                    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 100) };
                }
                std::io::ErrorKind::Interrupted => {}
                _ => {
                    // The first message was refused (e.g. GSO unsupported): skip it.
                    c.send_errors.fetch_add(1, Ordering::Relaxed);
                    off += 1;
                }
            }
        }
        self.out.clear();
        self.out_segments.clear();
    }
}

/// Writes a `SOL_UDP/UDP_SEGMENT` control message into `buf`; returns (pointer, length) for `msg_control`.
pub(crate) fn write_segment_cmsg(buf: &mut [u64; 4], segment: u16) -> (*mut libc::c_void, usize) {
    // SAFETY: CMSG_SPACE(2) = 24 bytes ≤ 32 (the buffer, 8-byte aligned). A msghdr pointing at the buffer
    // gives CMSG_FIRSTHDR a valid header inside it; CMSG_DATA has room for the u16.
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_control = buf.as_mut_ptr() as *mut libc::c_void;
        mh.msg_controllen = space as _;
        let cm = libc::CMSG_FIRSTHDR(&mh);
        (*cm).cmsg_level = SOL_UDP;
        (*cm).cmsg_type = libc::UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, segment);
        (buf.as_mut_ptr() as *mut libc::c_void, space)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_runs_group_equal_sizes() {
        let r = gso_runs(&[1000, 1000, 1000, 900, 100, 1000, 1000]);
        assert_eq!(
            r,
            vec![
                GsoRun { start: 0, end: 4, segment: 1000 },
                GsoRun { start: 4, end: 5, segment: 100 },
                GsoRun { start: 5, end: 7, segment: 1000 },
            ]
        );
        assert!(gso_runs(&[]).is_empty());
        // A bigger datagram starts a new run.
        assert_eq!(gso_runs(&[100, 200]).len(), 2);
        // Segment and byte limits.
        assert_eq!(gso_runs(&[10; 130]).iter().map(|r| r.end - r.start).collect::<Vec<_>>(), vec![64, 64, 2]);
        assert!(gso_runs(&[1400; 64]).iter().all(|r| (r.end - r.start) * 1400 <= GSO_MAX_BYTES));
    }

    fn forward_all(mode: SendMode) {
        let viewers: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for v in &viewers {
            v.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let addrs = viewers.iter().map(|v| v.local_addr().unwrap()).collect();
        let r = Reflector::spawn("127.0.0.1:0".parse().unwrap(), addrs, mode, None).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sizes = [1200usize, 1200, 1200, 800, 60];
        for (i, &n) in sizes.iter().enumerate() {
            tx.send_to(&vec![i as u8; n], r.addr()).unwrap();
        }
        let mut buf = [0u8; 2048];
        for v in &viewers {
            for (i, &n) in sizes.iter().enumerate() {
                let (len, _) = v.recv_from(&mut buf).unwrap();
                assert_eq!((len, buf[0]), (n, i as u8), "{mode:?}: datagrams arrive whole and in order");
            }
        }
        // The counters are updated after sendmmsg returns, maybe after the viewers already got the data.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while r.snapshot().forwarded < 15 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = r.snapshot();
        assert_eq!((s.packets_in, s.forwarded, s.send_errors), (5, 15, 0));
        if mode == SendMode::Sendmmsg {
            assert_eq!(s.messages, 15);
        }
    }

    #[test]
    fn gso_batch_is_split_by_the_kernel() {
        let viewers: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let addrs: Vec<SocketAddr> = viewers.iter().map(|v| v.local_addr().unwrap()).collect();
        let mut l = Loop::new(UdpSocket::bind("127.0.0.1:0").unwrap(), &addrs, SendMode::Gso);
        let sizes = [1000usize, 1000, 1000, 700, 100];
        for (i, _) in sizes.iter().enumerate() {
            l.bufs[i].fill(i as u8);
        }
        l.load_lens(&sizes);
        let c = ReflectorCounters::default();
        l.fan_out_gso(&c);
        let s = c.snapshot();
        assert_eq!(s.send_errors, 0, "UDP_SEGMENT refused by this kernel");
        assert_eq!((s.forwarded, s.messages), (10, 4), "two runs (4 + 1 datagrams) per viewer");
        let mut buf = [0u8; 2048];
        for v in &viewers {
            v.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for (i, &n) in sizes.iter().enumerate() {
                let (len, _) = v.recv_from(&mut buf).unwrap();
                assert_eq!((len, buf[0], buf[len - 1]), (n, i as u8, i as u8));
            }
        }
    }

    #[test]
    fn reflects_to_every_viewer() {
        forward_all(SendMode::Sendmmsg);
        forward_all(SendMode::Gso);
    }
}
