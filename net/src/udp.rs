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

/// Binds a glommio UDP socket on `addr` with large buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<glommio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
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
        iovs.extend(
            chunk.iter().map(|o| libc::iovec { iov_base: o.data.as_ptr() as *mut libc::c_void, iov_len: o.data.len() }),
        );
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
        self.iovs.extend(
            self.bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() }),
        );
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
            libc::recvmmsg(fd, self.msgs.as_mut_ptr(), self.msgs.len() as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
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
        assert_eq!(batch.recv_nonblocking(rx.as_raw_fd()), 0, "empty socket: returns at once");
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
}
