//! Per-core UDP sockets.
//!
//! Each core binds its own port (base + core index) so every datagram of a session reaches the core that
//! owns it with no shared table. Kernel buffers are raised so a burst of keyframe packets or a fan-out to
//! many viewers doesn't overflow them.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Wanted kernel buffer size; the kernel caps it at `net.core.{r,w}mem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// An unbound UDP socket for `addr`'s family (IPv6 ones dual-stack) with large kernel buffers.
pub(crate) fn new_udp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    Ok(socket)
}

/// Binds a glommio UDP socket on `addr` with large buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<glommio::net::UdpSocket> {
    let socket = new_udp_socket(addr)?;
    socket.bind(&addr.into())?;
    // SAFETY: the fd is a freshly bound UDP socket whose ownership moves to glommio.
    Ok(unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) })
}

/// One datagram to send.
pub struct Outgoing<'a> {
    pub to: SocketAddr,
    pub data: &'a [u8],
}

/// Outcome of [`send_batch_nonblocking`]: `sent + failed` datagrams were consumed from the front of the
/// batch; the rest hit a full socket buffer and should be sent asynchronously.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchResult {
    pub sent: usize,
    pub failed: usize,
}

/// Sends as many of `batch` as the kernel takes right now with one `sendmmsg(MSG_DONTWAIT)` per 64
/// datagrams. A datagram the kernel refuses (unreachable address family, oversized) is skipped and counted in
/// `failed`, never retried.
pub fn send_batch_nonblocking(fd: std::os::fd::RawFd, batch: &[Outgoing<'_>]) -> BatchResult {
    const CHUNK: usize = 64;
    let mut res = BatchResult::default();
    let mut addrs: Vec<socket2::SockAddr> = Vec::with_capacity(CHUNK);
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(CHUNK);
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(CHUNK);
    loop {
        let done = res.sent + res.failed;
        if done >= batch.len() {
            return res;
        }
        let chunk = &batch[done..(done + CHUNK).min(batch.len())];
        addrs.clear();
        iovs.clear();
        msgs.clear();
        addrs.extend(chunk.iter().map(|o| socket2::SockAddr::from(o.to)));
        iovs.extend(chunk.iter().map(|o| libc::iovec {
            iov_base: o.data.as_ptr() as *mut libc::c_void,
            iov_len: o.data.len(),
        }));
        for i in 0..chunk.len() {
            // SAFETY: mmsghdr is plain data; the pointers set here stay valid until sendmmsg returns.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = addrs[i].len();
            m.msg_hdr.msg_iov = iovs.as_mut_ptr().wrapping_add(i);
            m.msg_hdr.msg_iovlen = 1;
            msgs.push(m);
        }
        // SAFETY: msgs/iovs/addrs are valid for the duration of the call; the kernel only reads them.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return res;
            }
            // The first datagram of the chunk was refused: skip it and go on with the rest.
            res.failed += 1;
            continue;
        }
        res.sent += n as usize;
        if n == 0 {
            return res;
        }
    }
}

/// `UDP_SEGMENT` (linux/udp.h): the cmsg carrying a GSO segment size.
const UDP_SEGMENT: libc::c_int = 103;
/// At most this many datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// At most this many bytes in one GSO send (one IP datagram's worth of UDP payload).
const GSO_MAX_BYTES: usize = 65_000;

/// What [`GsoSender::send`] did: like [`BatchResult`], plus whether the kernel refused GSO itself (then the
/// caller should stop using it on this socket and send the rest with [`send_batch_nonblocking`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GsoResult {
    pub batch: BatchResult,
    pub gso_unsupported: bool,
}

/// Consecutive datagrams of `batch` to the same address, all of one size except a shorter last one: the
/// runs one GSO send can carry. Returns (first index, count, segment size) per run, in order.
pub fn gso_runs(batch: &[Outgoing<'_>], out: &mut Vec<(usize, usize, usize)>) {
    out.clear();
    let mut i = 0;
    while i < batch.len() {
        let (to, seg) = (batch[i].to, batch[i].data.len());
        let (mut n, mut bytes) = (1, seg);
        while i + n < batch.len() && n < GSO_MAX_SEGMENTS {
            let next = &batch[i + n];
            let len = next.data.len();
            if next.to != to || len > seg || len == 0 || bytes + len > GSO_MAX_BYTES {
                break;
            }
            n += 1;
            bytes += len;
            if len < seg {
                break; // a shorter datagram can only end a run
            }
        }
        out.push((i, n, seg));
        i += n;
    }
}

/// Messages per `sendmmsg` in [`GsoSender::send`].
const GSO_CHUNK: usize = 64;

/// Like [`send_batch_nonblocking`], but each run of datagrams to one address (a viewer's packets of one
/// frame, usually) goes as one UDP GSO send (`UDP_SEGMENT`): the kernel builds the datagrams from one
/// buffer walk, which costs less per datagram than separate messages. Owns its scratch buffers so a send
/// allocates nothing once they have grown to the batch size: keep one per socket task.
#[derive(Default)]
pub struct GsoSender {
    runs: Vec<(usize, usize, usize)>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<socket2::SockAddr>,
    /// cmsg buffers, one per message of a chunk; u64 storage keeps them aligned for cmsghdr.
    control: Vec<u64>,
    msgs: Vec<libc::mmsghdr>,
}

impl GsoSender {
    pub fn send(&mut self, fd: std::os::fd::RawFd, batch: &[Outgoing<'_>]) -> GsoResult {
        let cmsg_space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        let cmsg_words = cmsg_space.div_ceil(8);
        let mut res = GsoResult::default();
        let Self {
            runs,
            iovs,
            addrs,
            control,
            msgs,
        } = self;
        gso_runs(batch, runs);
        iovs.clear();
        iovs.extend(batch.iter().map(|o| libc::iovec {
            iov_base: o.data.as_ptr() as *mut libc::c_void,
            iov_len: o.data.len(),
        }));
        if control.len() < GSO_CHUNK * cmsg_words {
            control.resize(GSO_CHUNK * cmsg_words, 0);
        }
        let mut r = 0;
        while r < runs.len() {
            let chunk = &runs[r..(r + GSO_CHUNK).min(runs.len())];
            addrs.clear();
            msgs.clear();
            addrs.extend(
                chunk
                    .iter()
                    .map(|&(first, _, _)| socket2::SockAddr::from(batch[first].to)),
            );
            for (k, &(first, n, seg)) in chunk.iter().enumerate() {
                // SAFETY: mmsghdr is plain data; every pointer set here stays valid until sendmmsg returns.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = addrs[k].as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = addrs[k].len();
                m.msg_hdr.msg_iov = iovs.as_ptr().wrapping_add(first) as *mut libc::iovec;
                m.msg_hdr.msg_iovlen = n;
                if n > 1 {
                    let buf = control.as_mut_ptr().wrapping_add(k * cmsg_words) as *mut u8;
                    m.msg_hdr.msg_control = buf as *mut libc::c_void;
                    m.msg_hdr.msg_controllen = cmsg_space;
                    // SAFETY: buf has cmsg_space bytes reserved for this message; CMSG_* stay inside them.
                    unsafe {
                        let c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg as u16);
                    }
                }
                msgs.push(m);
            }
            // SAFETY: msgs/iovs/addrs/control are valid for the call; the kernel only reads them.
            let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, libc::MSG_DONTWAIT) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    return res;
                }
                let (_, count, _) = chunk[0];
                let gso_refused = matches!(
                    err.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                );
                if count > 1 && gso_refused {
                    res.gso_unsupported = true;
                    return res;
                }
                // The first message was refused (bad address family, too big): skip its datagrams.
                res.batch.failed += count;
                r += 1;
                continue;
            }
            if n == 0 {
                return res;
            }
            res.batch.sent += chunk[..n as usize].iter().map(|&(_, count, _)| count).sum::<usize>();
            r += n as usize;
        }
        res
    }
}

/// Receive side of batching: buffers for up to `n` datagrams taken with one `recvmmsg(MSG_DONTWAIT)`.
/// Allocated once per socket task; nothing is allocated per receive.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    /// Room for `n` datagrams of up to `size` bytes each (longer ones are truncated and skipped).
    pub fn new(n: usize, size: usize) -> Self {
        let n = n.max(1);
        // SAFETY: sockaddr_storage and mmsghdr are plain data for which all-zero is a valid value.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            addrs: vec![zero_addr; n],
            iovs: Vec::with_capacity(n),
            msgs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Takes the datagrams already queued on `fd` (never waits). Returns how many were received; read them
    /// with [`iter`](Self::iter).
    pub fn recv_nonblocking(&mut self, fd: std::os::fd::RawFd) -> usize {
        self.iovs.clear();
        self.iovs.extend(self.bufs.iter_mut().map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
        for i in 0..self.msgs.len() {
            let m = &mut self.msgs[i];
            m.msg_hdr.msg_name = (&mut self.addrs[i]) as *mut libc::sockaddr_storage as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = self.iovs.as_mut_ptr().wrapping_add(i);
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = std::ptr::null_mut();
            m.msg_hdr.msg_controllen = 0;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: every msghdr points into buffers owned by self that outlive the call; the kernel writes at
        // most iov_len bytes per buffer and msg_namelen bytes per address.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            0
        } else {
            n as usize
        }
    }

    /// The first `n` datagrams of the last receive as (source, bytes); truncated ones and unknown address
    /// families are skipped.
    pub fn iter(&self, n: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        (0..n.min(self.msgs.len())).filter_map(move |i| {
            let m = &self.msgs[i];
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                return None;
            }
            // SAFETY: the kernel filled addrs[i] with msg_namelen valid bytes of a socket address.
            let addr = unsafe { socket2::SockAddr::new(self.addrs[i], m.msg_hdr.msg_namelen) }.as_socket()?;
            let len = (m.msg_len as usize).min(self.bufs[i].len());
            Some((addr, &self.bufs[i][..len]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_reaches_receiver_and_bad_addresses_are_skipped() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        let mut batch: Vec<Outgoing> = payloads.iter().map(|p| Outgoing { to, data: p }).collect();
        batch.insert(3, Outgoing { to: v6, data: b"x" });
        let res = send_batch_nonblocking(tx.as_raw_fd(), &batch);
        assert_eq!(res, BatchResult { sent: 100, failed: 1 });
        let mut buf = [0u8; 64];
        for i in 0..100u8 {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i; 10]);
        }
    }

    #[test]
    fn recv_batch_takes_what_is_queued_and_never_waits() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new(4, 16);
        assert_eq!(
            batch.recv_nonblocking(rx.as_raw_fd()),
            0,
            "empty socket: returns at once"
        );
        for i in 0..6u8 {
            tx.send_to(&[i; 3], rx.local_addr().unwrap()).unwrap();
        }
        tx.send_to(&[9u8; 40], rx.local_addr().unwrap()).unwrap(); // longer than the buffer: skipped
        let n = batch.recv_nonblocking(rx.as_raw_fd());
        assert_eq!(n, 4);
        let got: Vec<(SocketAddr, Vec<u8>)> = batch.iter(n).map(|(a, d)| (a, d.to_vec())).collect();
        assert_eq!(got.len(), 4);
        for (i, (from, data)) in got.iter().enumerate() {
            assert_eq!(*from, tx.local_addr().unwrap());
            assert_eq!(data, &vec![i as u8; 3]);
        }
        let n = batch.recv_nonblocking(rx.as_raw_fd());
        assert_eq!(n, 3);
        assert_eq!(batch.iter(n).count(), 2, "the truncated datagram is skipped");
    }

    fn outgoing<'a>(to: SocketAddr, data: &'a [Vec<u8>]) -> Vec<Outgoing<'a>> {
        data.iter().map(|d| Outgoing { to, data: d }).collect()
    }

    #[test]
    fn gso_runs_group_same_address_same_size_with_a_shorter_tail() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let bufs: Vec<Vec<u8>> = [100, 100, 100, 60, 100, 100, 120]
            .iter()
            .map(|&n| vec![0u8; n])
            .collect();
        let mut batch = outgoing(a, &bufs[..5]);
        batch.extend(outgoing(b, &bufs[5..]));
        let mut runs = Vec::new();
        gso_runs(&batch, &mut runs);
        // a: 100,100,100,60 (shorter tail ends the run) | a: 100 | b: 100 | b: 120 (longer: new run)
        assert_eq!(runs, vec![(0, 4, 100), (4, 1, 100), (5, 1, 100), (6, 1, 120)]);
        let many: Vec<Vec<u8>> = (0..100).map(|_| vec![0u8; 1200]).collect();
        gso_runs(&outgoing(a, &many), &mut runs);
        assert!(
            runs.iter()
                .all(|&(_, n, _)| n * 1200 <= GSO_MAX_BYTES && n <= GSO_MAX_SEGMENTS),
            "{runs:?}"
        );
        assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), 100);
    }

    #[test]
    fn gso_batch_arrives_as_separate_datagrams_in_order() {
        let rx1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sizes = [1000usize, 1000, 1000, 400, 1000, 700];
        let bufs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        let mut batch = outgoing(rx1.local_addr().unwrap(), &bufs[..4]);
        batch.extend(outgoing(rx2.local_addr().unwrap(), &bufs[4..]));
        let res = GsoSender::default().send(tx.as_raw_fd(), &batch);
        if res.gso_unsupported {
            eprintln!("UDP GSO not supported here; skipping");
            return;
        }
        assert_eq!(res.batch, BatchResult { sent: 6, failed: 0 });
        let mut buf = [0u8; 2048];
        for (i, rx) in [&rx1, &rx1, &rx1, &rx1, &rx2, &rx2].iter().enumerate() {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(from, tx.local_addr().unwrap());
            assert_eq!(&buf[..n], &bufs[i][..], "datagram {i}");
        }
    }
}
