//! Just enough STUN parsing to route a datagram to its session without asking every session.
//!
//! ICE connectivity checks carry `USERNAME = <our ufrag>:<their ufrag>`. The UDP shell maps our ufrag to the
//! session, so the first packets of a new peer reach the right `Rtc`; after that the source address is
//! enough. Everything here is bounds-checked: these bytes come straight off the network.

/// STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// Demultiplexing class of a datagram on a WebRTC port (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramClass {
    Stun,
    Dtls,
    Rtp,
    Unknown,
}

pub fn classify(buf: &[u8]) -> DatagramClass {
    match buf.first() {
        Some(0..=3) => DatagramClass::Stun,
        Some(20..=63) => DatagramClass::Dtls,
        Some(128..=191) => DatagramClass::Rtp,
        _ => DatagramClass::Unknown,
    }
}

/// Returns `true` if `buf` has a well-formed STUN header (length consistent, cookie present).
pub fn is_valid_stun(buf: &[u8]) -> bool {
    if buf.len() < HEADER_LEN || buf[0] & 0xc0 != 0 || buf[4..8] != MAGIC_COOKIE {
        return false;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    len.is_multiple_of(4) && HEADER_LEN + len == buf.len()
}

/// The local (first) ufrag of a STUN request's USERNAME attribute, if any.
pub fn local_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_valid_stun(buf) {
        return None;
    }
    let mut at = HEADER_LEN;
    while at + 4 <= buf.len() {
        let ty = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        if ty == ATTR_USERNAME {
            let username = std::str::from_utf8(&buf[start..end]).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to 4 bytes.
        at = start + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(user: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7u8; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn finds_local_ufrag() {
        let m = stun_with_username("srvA:cli9");
        assert_eq!(classify(&m), DatagramClass::Stun);
        assert_eq!(local_ufrag(&m), Some("srvA"));
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let m = stun_with_username("abc:def");
        for cut in 0..m.len() {
            assert_eq!(local_ufrag(&m[..cut]), None, "cut at {cut}");
        }
        let mut bad = m.clone();
        bad[3] = 0xff; // length field lies
        assert_eq!(local_ufrag(&bad), None);
        assert_eq!(local_ufrag(&[0u8; 20]), None);
        assert_eq!(classify(&[]), DatagramClass::Unknown);
        assert_eq!(classify(&[0x16, 0xfe, 0xfd]), DatagramClass::Dtls);
        assert_eq!(classify(&[0x80, 0x60]), DatagramClass::Rtp);
    }

    #[test]
    fn attribute_length_overflow_is_safe() {
        let mut m = stun_with_username("a:b");
        // Claim a 65535-byte attribute inside a 32-byte message.
        m[22] = 0xff;
        m[23] = 0xff;
        assert_eq!(local_ufrag(&m), None);
    }
}
