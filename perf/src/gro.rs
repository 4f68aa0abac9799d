//! Receiving a GSO batch whole: `UDP_GRO` on a viewer socket, and `recvmsg` that says how to split it.
//!
//! Why it exists: on loopback the *receivers'* kernel path (segmenting the server's GSO message, one socket
//! enqueue and one wake-up per datagram) runs on the sending CPU and is charged to the server. A real viewer
//! is on another host, so that share is an artifact of the test machine, and it is large: ~25 % of the
//! server's CPU at 50 viewers in a `perf record` of the fan-out. With `UDP_GRO` a socket takes a GSO message
//! as one buffer of equal segments (the last may be shorter), so that artifact shrinks — it does not go away
//! (IP/UDP receive and one enqueue per message remain). `fanout --receiver-gro` and `floor --receiver-gro`
//! measure that way; the default stays one datagram per receive, as in every earlier result.
//! On loopback, senders that don't use GSO (Janus) are unaffected: a plain datagram arrives as itself either
//! way (a real NIC's GRO could merge them for such a socket too; the harness splits them all the same).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Enables `UDP_GRO` on `fd`: GSO messages arrive whole, with their segment size.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: plain setsockopt with a valid int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One receive: `len` bytes of the buffer, from `from`, made of `segment`-byte datagrams (`None`: one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub from: Option<SocketAddr>,
    pub segment: Option<usize>,
}

impl Received {
    /// The datagrams in `buf` (the buffer this receive filled); an empty datagram is one empty slice.
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let data = &buf[..self.len.min(buf.len())];
        let empty: &'a [u8] = &[];
        data.chunks(self.segment.unwrap_or(data.len()).max(1)).chain(data.is_empty().then_some(empty))
    }
}

/// `recvmsg` (non-blocking if the socket is) into `buf`; reads the `UDP_GRO` segment size if there is one.
/// `buf` should hold a whole GSO message (64 KiB) on a socket with [`enable`]d GRO: a message cut short by
/// a smaller buffer is an `InvalidData` error (its datagrams are lost), not a short last datagram.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: zeroed sockaddr_storage/msghdr are valid; every pointer in `msg` points into locals that
    // outlive the call, with the lengths given; CMSG_* walk the control buffer the kernel filled, bounded
    // by msg_controllen; `addr` holds the `msg_namelen` bytes of address the kernel wrote (as in
    // `net/src/udp.rs::RecvBatch`).
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut addr as *mut libc::sockaddr_storage as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("datagram larger than the {}-byte buffer", buf.len())));
        }
        let mut segment = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                segment = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let from = socket2::SockAddr::new(addr, msg.msg_namelen).as_socket();
        Ok(Received { len: n as usize, from, segment })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// `data` to `to` as one message split by the kernel into `segment`-byte datagrams (`UDP_SEGMENT`).
    fn send_gso(tx: &UdpSocket, to: SocketAddr, data: &[u8], segment: u16) {
        let SocketAddr::V4(to) = to else { panic!("IPv4 test address") };
        let mut control = [0u64; 4];
        let (control_ptr, control_len) = crate::reflector::write_segment_cmsg(&mut control, segment);
        // SAFETY: every pointer in `msg` points into locals that outlive the call.
        let sent = unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = to.port().to_be();
            addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
            let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut addr as *mut libc::sockaddr_in as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control_ptr;
            msg.msg_controllen = control_len as _;
            libc::sendmsg(tx.as_raw_fd(), &msg, 0)
        };
        assert_eq!(sent, data.len() as isize, "UDP_SEGMENT send: {}", io::Error::last_os_error());
    }

    /// Every receive until the socket stays quiet for 100 ms: (receive, its datagrams).
    fn receive_all(rx: &UdpSocket) -> Vec<(Received, Vec<Vec<u8>>)> {
        rx.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(r) = recv(rx.as_raw_fd(), &mut buf) {
            got.push((r, r.datagrams(&buf).map(<[u8]>::to_vec).collect()));
        }
        got
    }

    #[test]
    fn a_gso_message_arrives_whole_with_gro_and_datagram_by_datagram_without() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(gro.as_raw_fd()).unwrap();
        let frame: Vec<Vec<u8>> = vec![vec![1u8; 1000], vec![2u8; 1000], vec![3u8; 600]];
        let data = frame.concat();
        send_gso(&tx, plain.local_addr().unwrap(), &data, 1000);
        send_gso(&tx, gro.local_addr().unwrap(), &data, 1000);

        let plain_got = receive_all(&plain);
        assert_eq!(plain_got.iter().map(|(r, _)| (r.len, r.segment)).collect::<Vec<_>>(), [(1000, None), (1000, None), (600, None)]);
        assert_eq!(plain_got.iter().flat_map(|(_, d)| d.clone()).collect::<Vec<_>>(), frame);

        let gro_got = receive_all(&gro);
        assert_eq!(gro_got.len(), 1, "one receive for the whole message");
        let (r, datagrams) = &gro_got[0];
        assert_eq!((r.len, r.segment, r.from), (2600, Some(1000), Some(tx.local_addr().unwrap())));
        assert_eq!(datagrams, &frame);

        // A plain datagram to a GRO socket is just itself; an empty one is one empty datagram.
        tx.send_to(&[7u8; 300], gro.local_addr().unwrap()).unwrap();
        tx.send_to(&[], gro.local_addr().unwrap()).unwrap();
        let singles = receive_all(&gro);
        assert_eq!(singles.iter().map(|(r, d)| (r.len, d.len())).collect::<Vec<_>>(), [(300, 1), (0, 1)]);
    }

    #[test]
    fn a_message_larger_than_the_buffer_is_an_error_not_a_short_datagram() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        tx.send_to(&[1u8; 1000], rx.local_addr().unwrap()).unwrap();
        let mut small = [0u8; 100];
        let err = recv(rx.as_raw_fd(), &mut small).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
