//! Control-message encoding: every variant round-trips; hostile bytes give errors, never panics.

use std::collections::BTreeMap;

use sfumato_cluster::wire::{decode_auth, encode_auth, AuthFrame, MAX_FRAME_LEN, WIRE_VERSION};
use sfumato_cluster::{
    decode_control, BitrateHint, ControlFrame, ControlMsg, GossipEntry, GossipMsg, Hello, KeyframeRequest, Load,
    NodeAddrs, NodeData, NodeId, SignalKind, SignalReply, SignalRequest, Subscribe, TrackKind,
    CarriedRoom, Unsubscribe, WireError,
};

fn samples() -> Vec<ControlMsg> {
    let addrs = NodeAddrs {
        quic: "10.0.0.1:4433".parse().unwrap(),
        http: "10.0.0.1:3000".parse().unwrap(),
        media: vec![
            "10.0.0.1:10000".parse().unwrap(),
            "[2001:db8::1]:10001".parse().unwrap(),
        ],
    };
    vec![
        ControlMsg::Gossip(GossipMsg {
            entries: vec![GossipEntry {
                id: NodeId::new("node-1").unwrap(),
                incarnation: 1_717_000_000_000,
                heartbeat: 42,
                left: false,
                load: Load {
                    cpu_permille: 512,
                    sessions: 100,
                    bandwidth_bps: 80_000_000,
                },
                version: 3,
                data: Some(NodeData {
                    zone: "eu-west".into(),
                    addrs,
                    rooms: BTreeMap::from([(
                        "lobby".into(),
                        CarriedRoom {
                            publisher: true,
                            h264_profile_level_id: Some(0x4d401f),
                        },
                    )]),
                }),
            }],
            pull: vec![NodeId::new("node-2").unwrap()],
        }),
        ControlMsg::Subscribe(Subscribe {
            room: "lobby".into(),
            track: TrackKind::Video,
            channel: 7,
        }),
        ControlMsg::Unsubscribe(Unsubscribe {
            room: "lobby".into(),
            track: TrackKind::Audio,
        }),
        ControlMsg::KeyframeRequest(KeyframeRequest {
            room: "lobby".into(),
        }),
        ControlMsg::SignalRequest(SignalRequest {
            id: 9,
            kind: SignalKind::WhepOffer,
            room: "lobby".into(),
            peer: Some("viewer-1".into()),
            token: Some("eyJhbGciOi...".into()),
            content_type: "application/sdp".into(),
            body: "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n".into(),
        }),
        ControlMsg::SignalRequest(SignalRequest {
            id: 10,
            kind: SignalKind::Delete {
                resource: "abc123".into(),
            },
            room: "lobby".into(),
            peer: None,
            token: None,
            content_type: String::new(),
            body: String::new(),
        }),
        ControlMsg::SignalReply(SignalReply {
            id: 9,
            status: 201,
            location: Some("/whep/conn/abc".into()),
            etag: Some("\"1\"".into()),
            content_type: Some("application/sdp".into()),
            body: "v=0\r\n".into(),
        }),
        ControlMsg::BitrateHint(BitrateHint {
            room: "lobby".into(),
            bps: 1_250_000,
        }),
    ]
}

#[test]
fn bitrate_hint_is_appended_without_changing_older_variants() {
    // postcard writes the variant index first: the existing variants keep theirs (older nodes still
    // understand them) and the new one is the last.
    let kf = ControlFrame::encode(&ControlMsg::KeyframeRequest(KeyframeRequest { room: "r".into() })).unwrap();
    assert_eq!(&kf.as_bytes()[4..], &[WIRE_VERSION, 3, 1, b'r']);
    let hint = ControlMsg::BitrateHint(BitrateHint { room: "r".into(), bps: 300 });
    let frame = ControlFrame::encode(&hint).unwrap();
    assert_eq!(&frame.as_bytes()[4..], &[WIRE_VERSION, 6, 1, b'r', 0xac, 0x02]);
    assert_eq!(decode_control(&frame.as_bytes()[4..]).unwrap(), hint);
    // An over-long room name is refused like in every other message.
    let long = ControlMsg::BitrateHint(BitrateHint { room: "x".repeat(10_000), bps: 1 });
    if let Ok(frame) = ControlFrame::encode(&long) {
        assert!(decode_control(&frame.as_bytes()[4..]).is_err());
    }
}

#[test]
fn every_variant_round_trips() {
    for msg in samples() {
        let frame = ControlFrame::encode(&msg).unwrap();
        let bytes = frame.as_bytes();
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(bytes[4], WIRE_VERSION);
        assert_eq!(decode_control(&bytes[4..]).unwrap(), msg);
    }
}

#[test]
fn encoding_is_compact() {
    let hb_only = ControlMsg::Gossip(GossipMsg {
        entries: vec![GossipEntry {
            id: NodeId::new("node-1").unwrap(),
            incarnation: 1_717_000_000_000,
            heartbeat: 1000,
            left: false,
            load: Load {
                cpu_permille: 512,
                sessions: 100,
                bandwidth_bps: 80_000_000,
            },
            version: 3,
            data: None,
        }],
        pull: vec![],
    });
    let n = ControlFrame::encode(&hb_only).unwrap().as_bytes().len();
    assert!(n < 40, "heartbeat entry frame is {n} bytes");
}

#[test]
fn bad_version_trailing_and_limits_are_errors() {
    let frame = ControlFrame::encode(&samples()[1]).unwrap();
    let mut payload = frame.as_bytes()[4..].to_vec();
    payload[0] = 99;
    assert!(matches!(
        decode_control(&payload),
        Err(WireError::Version(99))
    ));
    let mut payload = frame.as_bytes()[4..].to_vec();
    payload.push(0);
    assert!(matches!(
        decode_control(&payload),
        Err(WireError::Trailing(1))
    ));
    assert!(matches!(decode_control(&[]), Err(WireError::Empty)));
    assert!(matches!(
        decode_control(&vec![1u8; MAX_FRAME_LEN + 1]),
        Err(WireError::TooLarge { .. })
    ));

    let long_room = ControlMsg::KeyframeRequest(KeyframeRequest {
        room: "r".repeat(300),
    });
    let frame = ControlFrame::encode(&long_room).unwrap();
    assert!(matches!(
        decode_control(&frame.as_bytes()[4..]),
        Err(WireError::Invalid(_))
    ));
    // A node id that breaks the rules is refused while decoding.
    let mut bytes = ControlFrame::encode(&samples()[0]).unwrap().as_bytes()[4..].to_vec();
    let pos = bytes.windows(6).position(|w| w == b"node-1").unwrap();
    bytes[pos] = b' ';
    assert!(decode_control(&bytes).is_err());
    // Too big to encode at all.
    let huge = ControlMsg::KeyframeRequest(KeyframeRequest {
        room: "r".repeat(MAX_FRAME_LEN),
    });
    assert!(ControlFrame::encode(&huge).is_err());
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    // Pure noise, with a valid version byte half of the time.
    for _ in 0..50_000 {
        let len = (rng.next() % 300) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len > 0 && rng.next().is_multiple_of(2) {
            buf[0] = WIRE_VERSION;
        }
        let _ = decode_control(&buf);
        let _ = decode_auth(&buf);
    }
    // Valid frames with bit flips, truncations, and huge length fields (varints set to 0xff...).
    let frames: Vec<Vec<u8>> = samples()
        .iter()
        .map(|m| ControlFrame::encode(m).unwrap().as_bytes()[4..].to_vec())
        .collect();
    for _ in 0..50_000 {
        let mut buf = frames[(rng.next() % frames.len() as u64) as usize].clone();
        match rng.next() % 3 {
            0 => {
                let i = 1 + (rng.next() as usize) % (buf.len() - 1);
                buf[i] ^= 1 << (rng.next() % 8);
            }
            1 => buf.truncate(1 + (rng.next() as usize) % buf.len()),
            _ => {
                let i = 1 + (rng.next() as usize) % (buf.len() - 1);
                for b in buf.iter_mut().skip(i).take(5) {
                    *b = 0xff;
                }
            }
        }
        let _ = decode_control(&buf);
    }
}

#[test]
fn auth_frame_round_trips() {
    let hello = Hello {
        node_id: NodeId::new("a").unwrap(),
        incarnation: 5,
        zone: "z".into(),
        addrs: NodeAddrs {
            quic: "1.2.3.4:1".parse().unwrap(),
            http: "1.2.3.4:2".parse().unwrap(),
            media: vec![],
        },
    };
    let frame = AuthFrame {
        hello,
        proof: [7; 32],
    };
    let bytes = encode_auth(&frame).unwrap();
    assert_eq!(decode_auth(&bytes[4..]).unwrap(), frame);
}
