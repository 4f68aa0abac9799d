//! Two `LinkEndpoint`s over real loopback UDP sockets (blocking std sockets, one per thread): the state
//! machine works against a real socket and the real clock, the way a shell drives it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sfumato_cluster::{
    ControlMsg, Hello, KeyframeRequest, LinkConfig, LinkEndpoint, LinkEvent, NodeAddrs, NodeId,
};

fn hello(name: &str, quic: SocketAddr) -> Hello {
    Hello {
        node_id: NodeId::new(name).unwrap(),
        incarnation: 1,
        zone: "local".into(),
        addrs: NodeAddrs {
            quic,
            http: quic,
            media: vec![],
        },
    }
}

/// One turn of a minimal shell: send what is queued, wait for a datagram or the next timeout, feed it.
fn turn(ep: &mut LinkEndpoint, sock: &UdpSocket, buf: &mut [u8]) {
    while let Some(t) = ep.poll_transmit() {
        let _ = sock.send_to(&t.bytes, t.dest);
    }
    let now = Instant::now();
    let wait = ep
        .poll_timeout()
        .map(|t| t.saturating_duration_since(now))
        .unwrap_or(Duration::from_millis(50))
        .clamp(Duration::from_millis(1), Duration::from_millis(50));
    let _ = sock.set_read_timeout(Some(wait));
    match sock.recv_from(buf) {
        Ok((n, from)) => ep.handle_datagram(Instant::now(), from, BytesMut::from(&buf[..n])),
        Err(_) => {
            let now = Instant::now();
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
            }
        }
    }
    while let Some(t) = ep.poll_transmit() {
        let _ = sock.send_to(&t.bytes, t.dest);
    }
}

#[test]
fn two_endpoints_over_loopback_udp() {
    let sock_a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock_b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b) = (sock_a.local_addr().unwrap(), sock_b.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<LinkEvent>();

    // b: an echo node in its own thread.
    let stop_b = stop.clone();
    let b = thread::spawn(move || {
        let mut ep = LinkEndpoint::new(
            Instant::now(),
            LinkConfig::new("loop-secret", hello("b", addr_b)),
        )
        .unwrap();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stop_b.load(Ordering::Relaxed) && Instant::now() < deadline {
            turn(&mut ep, &sock_b, &mut buf);
            while let Some(ev) = ep.poll_event() {
                match &ev {
                    LinkEvent::Control { peer, msg } => ep.send_control(*peer, msg).unwrap(),
                    LinkEvent::Datagram { peer, bytes } => {
                        ep.send_datagram(*peer, bytes.clone()).unwrap()
                    }
                    _ => {}
                }
                let _ = tx.send(ev);
            }
        }
    });

    let mut ep = LinkEndpoint::new(
        Instant::now(),
        LinkConfig::new("loop-secret", hello("a", addr_a)),
    )
    .unwrap();
    ep.keep_linked(Instant::now(), addr_b);
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut peer, mut got_control, mut got_datagram) = (None, false, false);
    let payload = Bytes::from(vec![0xabu8; 1000]);
    let request = ControlMsg::KeyframeRequest(KeyframeRequest {
        room: "loop".into(),
    });
    while Instant::now() < deadline && !(got_control && got_datagram) {
        turn(&mut ep, &sock_a, &mut buf);
        while let Some(ev) = ep.poll_event() {
            match ev {
                LinkEvent::Up {
                    peer: p, node_id, ..
                } => {
                    assert_eq!(node_id.as_str(), "b");
                    peer = Some(p);
                    ep.send_control(p, &request).unwrap();
                    ep.send_datagram(p, payload.clone()).unwrap();
                }
                LinkEvent::Control { msg, .. } => {
                    assert_eq!(msg, request);
                    got_control = true;
                }
                LinkEvent::Datagram { bytes, .. } => {
                    assert_eq!(bytes, payload);
                    got_datagram = true;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        // Datagrams are unreliable: resend until the echo arrives.
        if let (Some(p), false) = (peer, got_datagram) {
            let _ = ep.send_datagram(p, payload.clone());
        }
    }
    stop.store(true, Ordering::Relaxed);
    b.join().unwrap();
    assert!(peer.is_some(), "link never came up");
    assert!(
        got_control && got_datagram,
        "echo missing: control {got_control}, datagram {got_datagram}"
    );
    let b_events: Vec<LinkEvent> = rx.try_iter().collect();
    assert!(b_events
        .iter()
        .any(|e| matches!(e, LinkEvent::Up { node_id, .. } if node_id.as_str() == "a")));
    assert!(ep
        .rtt(peer.unwrap())
        .is_some_and(|r| r < Duration::from_secs(1)));
}
