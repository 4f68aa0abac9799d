//! `LinkEndpoint`s driven over an in-memory network with a fake clock.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{addr, hello, LogBuf, Net};
use sfumato_cluster::{
    AuthFailure, ControlMsg, DatagramError, DownReason, GossipMsg, KeyframeRequest, LinkConfig,
    LinkEvent, NodeId, Subscribe, TrackKind,
};

fn up_pair() -> Net {
    let mut net = Net::new();
    let a = net.add("a", 4001, "s3cret");
    let _b = net.add("b", 4002, "s3cret");
    let now = net.now;
    net.nodes[a].ep.keep_linked(now, addr(4002));
    assert!(
        net.run_until_pred(Duration::from_secs(1), |n| !n.ups(0).is_empty()
            && !n.ups(1).is_empty())
    );
    net
}

#[test]
fn handshake_and_auth_bring_link_up_on_both_sides() {
    let net = up_pair();
    assert_eq!(net.ups(0).len(), 1);
    assert_eq!(net.ups(1).len(), 1);
    assert_eq!(net.ups(0)[0].1.as_str(), "b");
    assert_eq!(net.ups(1)[0].1.as_str(), "a");
    // The hello carried the peer's advertised facts.
    let up = net.nodes[1].events.iter().find_map(|(_, e)| match e {
        LinkEvent::Up { hello, .. } => Some(hello.clone()),
        _ => None,
    });
    assert_eq!(up, Some(hello("a", 4001, 1)));
    assert!(
        net.elapsed() < Duration::from_millis(100),
        "in-memory handshake took {:?}",
        net.elapsed()
    );
    assert_eq!(net.nodes[0].ep.links().count(), 1);
    assert!(net.nodes[0]
        .ep
        .peer_of(&NodeId::new("b").unwrap())
        .is_some());
}

#[test]
fn wrong_secret_is_refused_and_logged_and_never_up() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut net = Net::new();
        let a = net.add("a", 4001, "right");
        let m = net.add("mallory", 4002, "wrong");
        let now = net.now;
        // The impostor tries to join through a (its seed).
        net.nodes[m].ep.keep_linked(now, addr(4001));
        net.run_for(Duration::from_secs(2));
        for i in [a, m] {
            assert!(
                net.ups(i).is_empty(),
                "node {i} saw Up: {:?}",
                net.nodes[i].events
            );
            assert_eq!(net.nodes[i].ep.links().count(), 0);
        }
        // a names the impostor it refused; the impostor learns it was refused.
        assert!(net.nodes[a].events.iter().any(|(_, e)| matches!(e,
            LinkEvent::AuthFailed { node_id: Some(n), reason: AuthFailure::BadProof, .. } if n.as_str() == "mallory")));
        assert!(net.nodes[m].events.iter().any(|(_, e)| matches!(
            e,
            LinkEvent::AuthFailed {
                reason: AuthFailure::RejectedByPeer,
                ..
            }
        )));
        // Nothing can be sent on the refused connection.
        assert!(net.nodes[a]
            .ep
            .send_datagram(sfumato_cluster::PeerId(1), Bytes::from_static(b"x"))
            .is_err());
        // Retries back off instead of hammering: attempts at 0, 0.25, 0.75, 1.75 s.
        let attempts = net.count(a, |e| matches!(e, LinkEvent::AuthFailed { .. }));
        assert_eq!(attempts, 4);

        // The other direction: a dialing the impostor also never gets a link.
        let now = net.now;
        net.nodes[a].ep.keep_linked(now, addr(4002));
        net.run_for(Duration::from_secs(1));
        assert!(net.ups(a).is_empty() && net.ups(m).is_empty());
    });
    let text = logs.text();
    assert!(
        text.contains("cluster link authentication failed"),
        "logs: {text}"
    );
    assert!(text.contains("mallory"), "logs: {text}");
}

#[test]
fn control_frames_and_datagrams_flow_both_ways() {
    let mut net = up_pair();
    let pa = net.nodes[0].ep.peer_of(&NodeId::new("b").unwrap()).unwrap();
    let pb = net.nodes[1].ep.peer_of(&NodeId::new("a").unwrap()).unwrap();

    for ch in 0..100u32 {
        let msg = ControlMsg::Subscribe(Subscribe {
            room: format!("room-{ch}"),
            track: TrackKind::Video,
            channel: ch,
        });
        net.nodes[0].ep.send_control(pa, &msg).unwrap();
    }
    net.nodes[1]
        .ep
        .send_control(
            pb,
            &ControlMsg::KeyframeRequest(KeyframeRequest { room: "r".into() }),
        )
        .unwrap();
    net.nodes[1]
        .ep
        .send_control(pb, &ControlMsg::Gossip(GossipMsg::default()))
        .unwrap();
    // A big control message spans many packets.
    let big = ControlMsg::KeyframeRequest(KeyframeRequest {
        room: "x".repeat(200),
    });
    net.nodes[1].ep.send_control(pb, &big).unwrap();

    let payload = Bytes::from(vec![7u8; 1000]);
    net.nodes[0].ep.send_datagram(pa, payload.clone()).unwrap();
    net.nodes[1]
        .ep
        .send_datagram(pb, Bytes::from_static(b"rtp back"))
        .unwrap();
    net.run_for(Duration::from_millis(100));

    let got_b: Vec<u32> = net.nodes[1]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            LinkEvent::Control {
                peer,
                msg: ControlMsg::Subscribe(s),
            } if *peer == pb => Some(s.channel),
            _ => None,
        })
        .collect();
    assert_eq!(
        got_b,
        (0..100).collect::<Vec<_>>(),
        "control frames arrive complete and in order"
    );
    let got_a: Vec<&ControlMsg> = net.nodes[0]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            LinkEvent::Control { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    assert_eq!(got_a.len(), 3);
    assert_eq!(got_a[2], &big);

    assert!(net.nodes[1]
        .events
        .iter()
        .any(|(_, e)| matches!(e, LinkEvent::Datagram { bytes, .. } if *bytes == payload)));
    assert!(net.nodes[0]
        .events
        .iter()
        .any(|(_, e)| matches!(e, LinkEvent::Datagram { bytes, .. } if &bytes[..] == b"rtp back")));

    // Too large for one QUIC datagram: reported, not sent.
    let max = net.nodes[0].ep.max_datagram_size(pa).unwrap();
    assert!(max >= 1100, "max datagram {max}");
    let err = net.nodes[0]
        .ep
        .send_datagram(pa, Bytes::from(vec![0u8; max + 1]))
        .unwrap_err();
    assert!(matches!(err, DatagramError::TooLarge { .. }), "{err:?}");
}

#[test]
fn silent_peer_is_down_within_idle_timeout() {
    let mut net = up_pair();
    // Some idle time first: keep-alives keep the link up.
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.count(0, |e| matches!(e, LinkEvent::Down { .. })), 0);

    net.nodes[1].silent = true;
    let t0 = net.now;
    assert!(net.run_until_pred(Duration::from_secs(5), |n| n
        .count(0, |e| matches!(e, LinkEvent::Down { .. }))
        == 1));
    let (at, reason) = net.nodes[0]
        .events
        .iter()
        .find_map(|(t, e)| match e {
            LinkEvent::Down {
                reason, node_id, ..
            } if node_id.as_str() == "b" => Some((*t, reason.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(reason, DownReason::TimedOut);
    let took = at - t0;
    // Idle timeout 2.5 s, measured from the last keep-alive (every 500 ms): within 3 s.
    assert!(took <= Duration::from_millis(3000), "down after {took:?}");
    assert!(
        took >= Duration::from_millis(2500),
        "down too early: {took:?}"
    );
}

#[test]
fn reconnects_with_backoff_after_peer_returns() {
    let mut net = up_pair();
    net.nodes[1].silent = true;
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.count(0, |e| matches!(e, LinkEvent::Down { .. })), 1);
    // While b is gone, a keeps redialing with growing gaps: after the first attempts (each lasting the
    // 3 s idle timeout) it waits 250 ms, 500 ms, ...
    let backoff: Vec<_> = net.nodes[0].ep.dial_targets().collect();
    assert_eq!(backoff.len(), 1);

    // b comes back as a new process (new incarnation) on the same address.
    let t_back = net.now;
    net.restart(1, LinkConfig::new("s3cret", hello("b", 4002, 2)));
    assert!(net.run_until_pred(Duration::from_secs(15), |n| n.ups(0).len() == 2));
    let (t_up, _) = net.ups(0)[1];
    // At worst: a dial attempt just started into the void (idle timeout) + the capped backoff (8 s).
    assert!(
        t_up - t_back <= Duration::from_millis(2500 + 8000 + 100),
        "{:?}",
        t_up - t_back
    );
    let hello_b = net.nodes[0].ep.links().next().map(|(_, h)| h.incarnation);
    assert_eq!(hello_b, Some(2));
    assert_eq!(net.ups(1).len(), 1);
}

#[test]
fn simultaneous_dials_leave_one_link() {
    let mut net = Net::new();
    let a = net.add("a", 4001, "k");
    let b = net.add("b", 4002, "k");
    let now = net.now;
    net.nodes[a].ep.keep_linked(now, addr(4002));
    net.nodes[b].ep.keep_linked(now, addr(4001));
    net.run_for(Duration::from_secs(20));
    assert_eq!(net.nodes[a].ep.links().count(), 1);
    assert_eq!(net.nodes[b].ep.links().count(), 1);
    // Stable: no flapping after the first seconds.
    let late_downs = net.nodes[a]
        .events
        .iter()
        .filter(|(t, e)| {
            *t > net.start + Duration::from_secs(1) && matches!(e, LinkEvent::Down { .. })
        })
        .count();
    assert_eq!(late_downs, 0, "{:?}", net.nodes[a].events);
    // Both ends kept the same connection: a message on it arrives.
    let pa = net.nodes[a].ep.peer_of(&NodeId::new("b").unwrap()).unwrap();
    net.nodes[a]
        .ep
        .send_datagram(pa, Bytes::from_static(b"hi"))
        .unwrap();
    net.run_for(Duration::from_millis(50));
    assert!(net.nodes[b]
        .events
        .iter()
        .any(|(_, e)| matches!(e, LinkEvent::Datagram { .. })));
}

#[test]
fn three_nodes_full_mesh() {
    let mut net = Net::new();
    for (name, port) in [("a", 4001), ("b", 4002), ("c", 4003)] {
        net.add(name, port, "k");
    }
    let now = net.now;
    net.nodes[0].ep.keep_linked(now, addr(4002));
    net.nodes[0].ep.keep_linked(now, addr(4003));
    net.nodes[1].ep.keep_linked(now, addr(4003));
    assert!(
        net.run_until_pred(Duration::from_secs(2), |n| (0..3).all(|i| n.nodes[i]
            .ep
            .links()
            .count()
            == 2))
    );
}

#[test]
fn dialing_ourselves_is_dropped() {
    let mut net = Net::new();
    // Our advertised address differs from the one a seed list uses for us (e.g. 0.0.0.0 binding).
    let mut cfg = LinkConfig::new("k", hello("a", 4001, 1));
    cfg.hello.addrs.quic = addr(9999);
    let a = net.add_at(addr(4001), cfg);
    let now = net.now;
    net.nodes[a].ep.keep_linked(now, addr(4001));
    net.run_for(Duration::from_secs(5));
    assert!(net.ups(a).is_empty());
    assert_eq!(
        net.nodes[a].ep.dial_targets().count(),
        0,
        "self address no longer dialed"
    );
}

#[test]
fn garbage_datagrams_do_not_panic() {
    let mut net = up_pair();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 1400) as usize;
        let mut buf = bytes::BytesMut::with_capacity(len);
        for k in 0..len {
            buf.extend_from_slice(&[(x.rotate_left(k as u32 % 64) & 0xff) as u8]);
        }
        if i % 3 == 0 && !buf.is_empty() {
            buf[0] |= 0xc0; // looks like a long-header QUIC packet
        }
        let now = net.now;
        net.nodes[1]
            .ep
            .handle_datagram(now, addr(5000 + (i % 50) as u16), buf);
        while net.nodes[1].ep.poll_transmit().is_some() {}
    }
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.nodes[1].ep.links().count(), 1, "the real link survives");
}
