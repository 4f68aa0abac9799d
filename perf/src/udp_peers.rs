//! Plain-UDP publisher and viewers for the floor scenario: same traffic shape and probes as the WebRTC
//! peers, no ICE/DTLS/SRTP.
//!
//! Why it exists: the floor must carry the same packets (sizes, frame bursts, audio cadence) as the
//! WebRTC fan-out and measure them the same way ([`ViewerStats`]), so that the only difference left is
//! what the server does per packet. Each datagram is a 12-byte RTP header, the probe payload and 10
//! zero bytes where an SRTP auth tag would be, so sizes on the wire match.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::affinity;
use crate::client::PublisherConfig;
use crate::probe::{self, Kind, Probe};
use crate::stats::ViewerStats;

pub const RTP_HEADER: usize = 12;
/// AES_CM_128_HMAC_SHA1_80 tag length.
pub const SRTP_TAG: usize = 10;

/// Builds one datagram: RTP header (V=2, marker, pt, seq, ts, ssrc), probe payload, tag-sized padding.
pub fn datagram(out: &mut Vec<u8>, p: &Probe, payload_bytes: usize, seq: u16, ts: u32, marker: bool) {
    let pt: u8 = if p.kind == Kind::Video { 96 } else { 111 };
    let mut payload = Vec::with_capacity(payload_bytes);
    probe::write(&mut payload, p, payload_bytes);
    out.clear();
    out.push(0x80);
    out.push(pt | if marker { 0x80 } else { 0 });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&p.stream_id.to_be_bytes());
    out.extend_from_slice(&payload);
    out.resize(out.len() + SRTP_TAG, 0);
}

/// (probe, seq, ts) of a datagram built by [`datagram`]; `None` for anything else.
pub fn parse_datagram(b: &[u8]) -> Option<(Probe, u16, u32)> {
    if b.len() < RTP_HEADER + probe::HEADER_LEN + SRTP_TAG || b[0] >> 6 != 2 {
        return None;
    }
    let seq = u16::from_be_bytes([b[2], b[3]]);
    let ts = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Some((probe::parse(&b[RTP_HEADER..b.len() - SRTP_TAG])?, seq, ts))
}

/// A thread sending the synthetic publisher's traffic to one address.
pub struct UdpPublisher {
    pub sent: Arc<[AtomicU64; 2]>,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl UdpPublisher {
    /// Sends video to `video_to` and audio to `audio_to` (the same address for the floor's reflector;
    /// two ports for a Janus streaming mountpoint).
    pub fn spawn(video_to: SocketAddr, audio_to: SocketAddr, cfg: PublisherConfig, cpu: Option<usize>) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(if video_to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        let to = [video_to, audio_to];
        let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (sent.clone(), stop.clone());
        let join = std::thread::Builder::new().name("floor-publisher".into()).spawn(move || {
            if let Some(c) = cpu {
                let _ = affinity::pin_current_thread(c);
            }
            publish_loop(&socket, to, cfg, &s2, &st2);
        })?;
        Ok(Self { sent, stop, join: Some(join) })
    }

    pub fn sent(&self, kind: Kind) -> u64 {
        self.sent[kind.index()].load(Ordering::Acquire)
    }
}

impl Drop for UdpPublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn publish_loop(socket: &UdpSocket, to: [SocketAddr; 2], cfg: PublisherConfig, sent: &[AtomicU64; 2], stop: &AtomicBool) {
    let (ppf, payload_bytes) = cfg.frame_shape();
    let frame_period = Duration::from_nanos(1_000_000_000 / cfg.fps.max(1) as u64);
    let audio_period = Duration::from_millis(20);
    let start = Instant::now();
    let (mut next_frame, mut next_audio) = (start, start);
    let (mut frame_no, mut audio_no, mut vseq, mut aseq) = (0u64, 0u64, 0u16, 0u16);
    let mut buf = Vec::with_capacity(2048);
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_frame {
            let key = frame_no % cfg.gop.max(1) as u64 == 0;
            let ts = (frame_no * 90_000 / cfg.fps.max(1) as u64) as u32;
            for i in 0..ppf {
                let counter = sent[0].load(Ordering::Relaxed);
                let p = Probe {
                    kind: Kind::Video,
                    keyframe: key,
                    frame_start: i == 0,
                    stream_id: cfg.stream_id,
                    counter,
                    sent_ns: probe::ns_since_epoch(Instant::now()),
                };
                datagram(&mut buf, &p, payload_bytes, vseq, ts, i + 1 == ppf);
                let _ = socket.send_to(&buf, to[0]);
                vseq = vseq.wrapping_add(1);
                sent[0].store(counter + 1, Ordering::Release);
            }
            frame_no += 1;
            next_frame += frame_period;
        }
        if cfg.audio && now >= next_audio {
            let counter = sent[1].load(Ordering::Relaxed);
            let p = Probe {
                kind: Kind::Audio,
                keyframe: false,
                frame_start: true,
                stream_id: cfg.stream_id,
                counter,
                sent_ns: probe::ns_since_epoch(Instant::now()),
            };
            datagram(&mut buf, &p, cfg.audio_payload_bytes, aseq, (audio_no * 960) as u32, true);
            let _ = socket.send_to(&buf, to[1]);
            aseq = aseq.wrapping_add(1);
            audio_no += 1;
            sent[1].store(counter + 1, Ordering::Release);
            next_audio += audio_period;
        }
        let wake = if cfg.audio { next_frame.min(next_audio) } else { next_frame };
        let wait = wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// N viewer sockets read by one thread (epoll), each accounting into its own [`ViewerStats`].
pub struct UdpViewers {
    addrs: Vec<SocketAddr>,
    stats: Arc<Vec<Mutex<ViewerStats>>>,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl UdpViewers {
    /// `gro`: the sockets take GSO messages whole ([`crate::gro`]).
    pub fn spawn(n: usize, ip: std::net::IpAddr, cpu: Option<usize>, gro: bool) -> std::io::Result<Self> {
        let sockets: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind(SocketAddr::new(ip, 0))).collect::<Result<_, _>>()?;
        let mut addrs = Vec::with_capacity(n);
        for s in &sockets {
            s.set_nonblocking(true)?;
            if gro {
                crate::gro::enable(s.as_raw_fd())?;
            }
            addrs.push(s.local_addr()?);
        }
        // SAFETY: plain syscall; the fd is checked and owned by the thread below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (i, s) in sockets.iter().enumerate() {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            // SAFETY: ep and the socket fd are valid; ev is a valid epoll_event.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: ep is ours.
                unsafe { libc::close(ep) };
                return Err(e);
            }
        }
        let stats: Arc<Vec<Mutex<ViewerStats>>> = Arc::new((0..n).map(|_| Mutex::new(ViewerStats::default())).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (st2, stop2) = (stats.clone(), stop.clone());
        let join = std::thread::Builder::new().name("floor-viewers".into()).spawn(move || {
            if let Some(c) = cpu {
                let _ = affinity::pin_current_thread(c);
            }
            receive_loop(ep, &sockets, &st2, &stop2);
            // SAFETY: ep is ours and no longer used.
            unsafe { libc::close(ep) };
        })?;
        Ok(Self { addrs, stats, stop, join: Some(join) })
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn stats(&self, i: usize) -> MutexGuard<'_, ViewerStats> {
        self.stats[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for UdpViewers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn receive_loop(ep: libc::c_int, sockets: &[UdpSocket], stats: &[Mutex<ViewerStats>], stop: &AtomicBool) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    // Room for a whole GSO message on a GRO socket.
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Acquire) {
        // SAFETY: events has room for `events.len()` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as libc::c_int, 100) };
        if n <= 0 {
            continue;
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let Some(s) = sockets.get(i) else { continue };
            loop {
                match crate::gro::recv(s.as_raw_fd(), &mut buf) {
                    Ok(got) => {
                        let now = probe::ns_since_epoch(Instant::now());
                        let mut st = stats[i].lock().unwrap_or_else(|e| e.into_inner());
                        for d in got.datagrams(&buf) {
                            match parse_datagram(d) {
                                Some((p, seq, ts)) => {
                                    st.record(&p, now, seq, ts);
                                }
                                None => st.foreign_packets += 1,
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // WouldBlock, or an ICMP error: nothing more now
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_roundtrip_and_size() {
        let p = Probe { kind: Kind::Video, keyframe: true, frame_start: true, stream_id: 9, counter: 42, sent_ns: 7 };
        let mut b = Vec::new();
        datagram(&mut b, &p, 1000, 65535, 3000, true);
        assert_eq!(b.len(), RTP_HEADER + 1000 + SRTP_TAG);
        assert_eq!(parse_datagram(&b), Some((p, 65535, 3000)));
        assert_eq!(parse_datagram(&b[..20]), None);
        b[0] = 0;
        assert_eq!(parse_datagram(&b), None, "not RTP version 2");
    }

    #[test]
    fn publisher_to_viewer() {
        let v = UdpViewers::spawn(2, "127.0.0.1".parse().unwrap(), None, false).unwrap();
        let cfg = PublisherConfig { bitrate_bps: 500_000, fps: 50, ..PublisherConfig::default() };
        let p = UdpPublisher::spawn(v.addrs()[1], v.addrs()[1], cfg, None).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(p);
        std::thread::sleep(Duration::from_millis(50));
        let st = v.stats(1);
        assert!(st.got_keyframe);
        assert!(st.kinds[0].packets >= 10, "{}", st.kinds[0].packets);
        assert!(st.kinds[1].packets >= 10);
        assert_eq!(st.kinds[0].lost(), 0);
        assert_eq!(v.stats(0).kinds[0].packets, 0);
    }
}
