//! A media port as two sockets: one the core waits on, and an RTCP lane it only reads when it is awake anyway.
//!
//! Why it exists: each datagram that reaches an idle core wakes it, and on the test VM a wake-up (the
//! reactor's park and unpark, the task switch) costs ~40–60 µs of CPU whatever it carries. A publisher's
//! media wakes a core ~80 times a second (each video frame's packets together, each audio packet), but its
//! viewers' RTCP — receiver reports, NACKs, PLIs, transport-wide feedback, each viewer on its own clock —
//! arrives between those wake-ups: 50 aiortc/str0m viewers doubled the wake-ups of a core, browsers with
//! transport-wide feedback every 50–100 ms would send ~10× more. None of that feedback needs the core
//! *this* microsecond: a NACK answered 10 ms later still beats the viewer's jitter buffer, a keyframe
//! request is throttled anyway, a receiver report only feeds statistics.
//!
//! So the port is bound twice, both sockets in one `SO_REUSEPORT` group, and a classic BPF program on the
//! group tells the kernel which socket each datagram goes to by its first two bytes (the RFC 7983 / RFC 5761
//! demultiplexing every WebRTC stack does): RTCP (first byte 128–191, second 192–223) to the lane, all else —
//! RTP, STUN, DTLS, garbage — to the main socket. The core shell drains the lane with one non-blocking
//! `recvmmsg` after each wake-up's media has left, and on its tick (≤ 50 ms) when nothing else wakes it.
//! Replies go out through the main socket: same address, same port, so peers see nothing of this.
//!
//! Before binding, a probe socket without `SO_REUSEPORT` checks that nobody holds the port (UDP has no
//! TIME_WAIT, so unlike the HTTP port a probe bind is a fair test): a second sfumato on the same ports fails
//! with "address in use" instead of silently joining the group. If the lane can't be set up (a kernel or
//! sandbox refusing the BPF program), the port is bound once, as a single socket, and the caller is told why.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

use socket2::Socket;

use crate::udp::new_udp_socket;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the same on every Linux architecture sfumato builds for).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

// Classic BPF opcodes (linux/bpf_common.h), spelled as the kernel's headers compose them (BPF_LD and BPF_K are 0).
#[allow(clippy::identity_op)]
const BPF_LD_B_ABS: u16 = 0x00 /* BPF_LD */ | 0x10 /* BPF_B */ | 0x20 /* BPF_ABS */;
#[allow(clippy::identity_op)]
const BPF_JMP_JGE_K: u16 = 0x05 /* BPF_JMP */ | 0x30 /* BPF_JGE */ | 0x00 /* BPF_K */;
#[allow(clippy::identity_op)]
const BPF_RET_K: u16 = 0x06 /* BPF_RET */ | 0x00 /* BPF_K */;

/// The index, in the `SO_REUSEPORT` group, of the main socket (bound first) and of the lane (second).
const MAIN_INDEX: u32 = 0;
const LANE_INDEX: u32 = 1;

/// The steering program. A reuseport program sees the datagram from its UDP payload on and returns the index
/// of the socket to deliver to. A load past the end (a datagram of 0 or 1 byte) ends the program with 0:
/// the main socket.
fn steering_program() -> [libc::sock_filter; 8] {
    let stmt = |code, k| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jge = |k, jt, jf| libc::sock_filter { code: BPF_JMP_JGE_K, jt, jf, k };
    [
        /* 0 */ stmt(BPF_LD_B_ABS, 0), // A = first byte
        /* 1 */ jge(128, 0, 5),        // < 128 (STUN, DTLS, ...): main
        /* 2 */ jge(192, 4, 0),        // >= 192: not RTP/RTCP, main
        /* 3 */ stmt(BPF_LD_B_ABS, 1), // A = second byte (RTCP packet type, or RTP marker + payload type)
        /* 4 */ jge(192, 0, 2),        // < 192: RTP, main
        /* 5 */ jge(224, 1, 0),        // 192..=223: RTCP
        /* 6 */ stmt(BPF_RET_K, LANE_INDEX),
        /* 7 */ stmt(BPF_RET_K, MAIN_INDEX),
    ]
}

/// Whether the steering program sends `datagram` to the lane: the same test in Rust, for the tests and the docs.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram, [128..=191, 192..=223, ..])
}

/// One media port: the socket the core waits on (and sends from), and its RTCP lane.
pub struct MediaPort {
    /// Blocking, as bound; [`MediaPort::main_into_glommio`] hands it to the executor.
    pub main: std::net::UdpSocket,
    pub lane: Lane,
}

/// The RTCP lane of a [`MediaPort`], or why there is none.
pub enum Lane {
    /// Non-blocking; read with `RecvBatch::recv_nonblocking`, never waited on.
    Bound(std::net::UdpSocket),
    /// The caller asked for a single socket.
    NotWanted,
    /// The kernel (or a sandbox) refused part of the set-up: the port is a single socket.
    Refused(String),
}

/// Binds `addr` as a [`MediaPort`] with large buffers, with an RTCP lane if `lane`. Fails if the address is
/// taken (by anyone, including another sfumato: see the module docs); a lane that can't be made leaves a
/// single socket and the reason.
pub fn bind_media_port(addr: SocketAddr, lane: bool) -> std::io::Result<MediaPort> {
    // The probe: held by someone else → "address in use" here. Port 0 picks the port the pair then binds.
    let probe = new_udp_socket(addr)?;
    probe.bind(&addr.into())?;
    if !lane {
        return Ok(MediaPort { main: probe.into(), lane: Lane::NotWanted });
    }
    let addr = probe.local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("probe has no inet address"))?;
    drop(probe);
    match bind_pair(addr) {
        Ok((main, lane)) => Ok(MediaPort { main: main.into(), lane: Lane::Bound(lane) }),
        Err(e) => {
            let main = new_udp_socket(addr)?;
            main.bind(&addr.into())?;
            Ok(MediaPort { main: main.into(), lane: Lane::Refused(e.to_string()) })
        }
    }
}

impl MediaPort {
    /// The main socket as a glommio socket. Panics outside a glommio executor (glommio's own rule).
    pub fn main_into_glommio(main: std::net::UdpSocket) -> glommio::net::UdpSocket {
        // SAFETY: the fd is a bound UDP socket whose ownership moves to glommio.
        unsafe { glommio::net::UdpSocket::from_raw_fd(main.into_raw_fd()) }
    }
}

fn bind_pair(addr: SocketAddr) -> std::io::Result<(Socket, std::net::UdpSocket)> {
    let main = new_udp_socket(addr)?;
    main.set_reuse_port(true)?;
    main.bind(&addr.into())?;
    let lane = new_udp_socket(addr)?;
    lane.set_reuse_port(true)?;
    lane.bind(&addr.into())?;
    lane.set_nonblocking(true)?;
    let program = steering_program();
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            main.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("attaching the RTCP steering program: {e}")));
    }
    Ok((main, lane.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::RecvBatch;
    use std::time::{Duration, Instant};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// What reaches `fd` within `wait`, as payloads.
    fn drain(fd: std::os::fd::RawFd, wait: Duration) -> Vec<Vec<u8>> {
        let mut batch = RecvBatch::new(16, 2048);
        let mut got = Vec::new();
        let end = Instant::now() + wait;
        while Instant::now() < end {
            let n = batch.recv_nonblocking(fd);
            got.extend(batch.iter(n).map(|(_, d)| d.to_vec()));
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("rtp", vec![0x80, 0x60, 0, 1, 0, 0, 0, 0]),
            ("rtp with marker, pt 96", vec![0x80, 0xe0, 0, 2, 0, 0, 0, 0]),
            ("rtcp sender report", vec![0x80, 200, 0, 6]),
            ("rtcp receiver report", vec![0x81, 201, 0, 7]),
            ("rtcp transport feedback", vec![0x8f, 205, 0, 4]),
            ("rtcp pli", vec![0x81, 206, 0, 2]),
            ("rtcp type 223", vec![0x80, 223]),
            ("stun binding request", vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]),
            ("dtls handshake", vec![22, 0xfe, 0xfd, 0, 0]),
            ("one byte", vec![0x80]),
            ("garbage above rtp", vec![0xff, 0xc8, 1, 2]),
            ("rtp pt 96 + 128", vec![0x80, 224]),
        ]
    }

    #[test]
    fn rtcp_goes_to_the_lane_everything_else_to_the_main_socket() -> TestResult {
        let port = bind_media_port(loopback(), true)?;
        let lane = match &port.lane {
            Lane::Bound(lane) => lane,
            Lane::NotWanted => return Err("a lane was asked for".into()),
            Lane::Refused(why) => return Err(format!("no RTCP lane on this kernel: {why}").into()),
        };
        let to = lane.local_addr()?;
        assert_eq!(port.main.local_addr()?, to, "one port, two sockets");
        let tx = std::net::UdpSocket::bind(loopback())?;
        for (_, d) in samples() {
            tx.send_to(&d, to)?;
        }
        let on_lane = drain(lane.as_raw_fd(), Duration::from_millis(100));
        let on_main = drain(port.main.as_raw_fd(), Duration::from_millis(50));
        for (name, d) in samples() {
            let (want, other) = if is_rtcp(&d) { (&on_lane, &on_main) } else { (&on_main, &on_lane) };
            assert!(want.contains(&d), "{name} not where it belongs (rtcp: {})", is_rtcp(&d));
            assert!(!other.contains(&d), "{name} delivered to the wrong socket");
        }
        assert_eq!(on_lane.len(), 5, "{on_lane:?}");
        assert_eq!(on_main.len(), samples().len() - 5);
        Ok(())
    }

    #[test]
    fn a_taken_port_is_refused_even_to_another_reuseport_pair() -> TestResult {
        let first = bind_media_port(loopback(), true)?;
        let addr = first.main.local_addr()?;
        let again = bind_media_port(addr, true);
        assert_eq!(again.err().map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
        // A plain socket holding the port is refused too.
        let plain = std::net::UdpSocket::bind(loopback())?;
        let taken = bind_media_port(plain.local_addr()?, true);
        assert_eq!(taken.err().map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
        // Without a lane: one plain socket, which a pair can't join either.
        let single = bind_media_port(loopback(), false)?;
        assert!(matches!(single.lane, Lane::NotWanted));
        let joined = bind_media_port(single.main.local_addr()?, true);
        assert_eq!(joined.err().map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
        Ok(())
    }

    #[test]
    fn is_rtcp_follows_rfc_5761() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0xbf, 223, 0]));
        assert!(!is_rtcp(&[0x80, 191]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0xc0, 200]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }
}
