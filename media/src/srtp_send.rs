//! SRTP for packets sfumato writes itself: the session keys of our direction, derived from a DTLS-SRTP
//! connection's keying material (RFC 5764 §4.2; the RFC 3711 §4.3 key derivation; RFC 7714 for the AEAD
//! profiles), and `protect_rtp_in_place` / `protect_rtcp`.
//!
//! Why it exists: str0m encrypts everything it sends, but each forwarded packet then also goes through its
//! send queue, pacer snapshot, RTX cache and output copies — a measured ~0.8 µs of the ~4.3 µs a forwarded
//! packet costs (docs/architecture.md, "Where the CPU of a forwarded packet goes"). A direct send path writes
//! the viewer's packet once and encrypts it here. This module is its first part; it is not on the packet
//! path yet (what remains is listed in that section of docs/architecture.md).
//!
//! The IV/HMAC layouts, the counter-mode cipher and the key derivation's AES are str0m's crypto provider's
//! public building blocks (`str0m::crypto`); the AEAD profiles seal in place with aws-lc-rs (the library
//! under str0m's default provider) to save a copy per packet. A packet protected here is what str0m itself
//! would send for the same index.
//! Tests: known answers computed with libsrtp (pylibsrtp 1.0.0) for all three profiles, and the same packet
//! protected by str0m after a real DTLS handshake (`dtls_keys` tests).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use str0m::crypto::dtls::SrtpProfile as DtlsSrtpProfile;
use str0m::crypto::{
    AeadAes128Gcm, AeadAes256Gcm, Aes128CmSha1_80, Aes128CmSha1_80Cipher, CryptoProvider, Sha1HmacProvider, SrtpProvider,
};

/// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;
/// The E flag and 31-bit index that end every SRTCP packet.
const SRTCP_INDEX_LEN: usize = 4;
/// Spare bytes after a counter-mode output (some providers' CTR wants room past the data).
const CTR_PADDING: usize = 16;

/// The SRTP protection profiles a DTLS-SRTP handshake can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpProfile {
    Aes128CmSha1_80,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl SrtpProfile {
    fn key_len(self) -> usize {
        match self {
            Self::Aes128CmSha1_80 | Self::AeadAes128Gcm => 16,
            Self::AeadAes256Gcm => 32,
        }
    }

    fn salt_len(self) -> usize {
        match self {
            Self::Aes128CmSha1_80 => Aes128CmSha1_80::SALT_LEN,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => AeadAes128Gcm::SALT_LEN,
        }
    }

    /// Bytes of DTLS-SRTP keying material: both sides' master keys, then both sides' master salts.
    pub fn keying_material_len(self) -> usize {
        2 * (self.key_len() + self.salt_len())
    }

    /// Bytes an RTP packet grows by (authentication tag).
    #[cfg(test)]
    pub fn rtp_overhead(self) -> usize {
        match self {
            Self::Aes128CmSha1_80 => Aes128CmSha1_80::HMAC_TAG_LEN,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => AeadAes128Gcm::TAG_LEN,
        }
    }
}

impl SrtpProfile {
    /// The profile a DTLS handshake selected (`None`: one this module does not know).
    pub fn of(p: DtlsSrtpProfile) -> Option<Self> {
        match p {
            DtlsSrtpProfile::AES128_CM_SHA1_80 => Some(Self::Aes128CmSha1_80),
            DtlsSrtpProfile::AEAD_AES_128_GCM => Some(Self::AeadAes128Gcm),
            DtlsSrtpProfile::AEAD_AES_256_GCM => Some(Self::AeadAes256Gcm),
            _ => None,
        }
    }
}

/// Why a context could not be made or a packet not protected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpError {
    #[error("keying material of {got} bytes, {profile:?} needs {expected}")]
    MaterialLength { profile: SrtpProfile, expected: usize, got: usize },
    #[error("packet of {len} bytes is shorter than its {header} byte header")]
    Short { len: usize, header: usize },
    #[error("SRTP index {index:#x} does not end in the packet's sequence number {seq:#06x}")]
    IndexMismatch { index: u64, seq: u16 },
    #[error("cipher failed: {0}")]
    Cipher(String),
    #[error("SRTP index {index:#x} was already sent with other content")]
    IndexReused { index: u64 },
}

/// The keys and state of one direction of one DTLS-SRTP connection: what we send.
pub struct SrtpSendContext {
    profile: SrtpProfile,
    rtp: Protection,
    rtcp: Protection,
    /// The next SRTCP index (31 bits; libsrtp's first is 1, so is ours).
    srtcp_index: u32,
    hmac: &'static dyn Sha1HmacProvider,
    /// Counter-mode input copy (that cipher writes to a separate buffer).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for SrtpSendContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSendContext").field("profile", &self.profile).field("srtcp_index", &self.srtcp_index).finish()
    }
}

/// Session keys of one of RTP or RTCP.
enum Protection {
    CmSha1 { cipher: Box<dyn Aes128CmSha1_80Cipher>, salt: [u8; 14], auth_key: [u8; 20] },
    /// AEAD_AES_128_GCM or AEAD_AES_256_GCM (RFC 7714): the same IV layouts, the key's length differs.
    Gcm { key: LessSafeKey, salt: [u8; 12] },
}

impl SrtpSendContext {
    /// The context for what this side sends. `material` is the DTLS exporter's output for "EXTRACTOR-dtls_srtp"
    /// (client key, server key, client salt, server salt); `active`: this side was the DTLS client.
    pub fn new(crypto: &CryptoProvider, profile: SrtpProfile, material: &[u8], active: bool) -> Result<Self, SrtpError> {
        let (kl, sl) = (profile.key_len(), profile.salt_len());
        let expected = profile.keying_material_len();
        if material.len() != expected {
            return Err(SrtpError::MaterialLength { profile, expected, got: material.len() });
        }
        let (key_at, salt_at) = if active { (0, 2 * kl) } else { (kl, 2 * kl + sl) };
        let master = &material[key_at..key_at + kl];
        let salt = &material[salt_at..salt_at + sl];
        let srtp = crypto.srtp_provider;
        let rtp = Protection::derive(srtp, profile, master, salt, [LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT])?;
        let rtcp = Protection::derive(srtp, profile, master, salt, [LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT])?;
        Ok(Self { profile, rtp, rtcp, srtcp_index: 1, hmac: crypto.sha1_hmac_provider, scratch: Vec::new() })
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Protects one RTP packet (`header_len` bytes of header, extensions included, then the payload) with
    /// SRTP index `index` (rollover counter << 16 | sequence number) into `out` (cleared first). The packet
    /// path protects in place; this copying form is for comparisons in tests.
    #[cfg(test)]
    pub fn protect_rtp(&mut self, packet: &[u8], header_len: usize, index: u64, out: &mut Vec<u8>) -> Result<(), SrtpError> {
        out.clear();
        out.extend_from_slice(packet);
        self.protect_rtp_in_place(out, header_len, index)
    }

    /// Protects one RTP packet (`header_len` bytes of header, extensions included, then the payload) with SRTP
    /// index `index` (rollover counter << 16 | sequence number) where it is: the payload is encrypted in place
    /// and the tag appended (reserve 16 bytes, and a few more for counter mode, to avoid a reallocation).
    pub fn protect_rtp_in_place(&mut self, packet: &mut Vec<u8>, header_len: usize, index: u64) -> Result<(), SrtpError> {
        if packet.len() < header_len || header_len < 12 {
            return Err(SrtpError::Short { len: packet.len(), header: header_len.max(12) });
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        if index & 0xffff != u64::from(seq) {
            return Err(SrtpError::IndexMismatch { index, seq });
        }
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let end = packet.len();
        match &mut self.rtp {
            Protection::CmSha1 { cipher, salt, auth_key } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                self.scratch.clear();
                self.scratch.extend_from_slice(&packet[header_len..]);
                packet.resize(end + CTR_PADDING.max(Aes128CmSha1_80::HMAC_TAG_LEN), 0);
                cipher.encrypt(&iv, &self.scratch, &mut packet[header_len..]).map_err(|e| SrtpError::Cipher(e.to_string()))?;
                packet.truncate(end + Aes128CmSha1_80::HMAC_TAG_LEN);
                let hmac = self.hmac;
                Aes128CmSha1_80::rtp_hmac(|k, p| hmac.sha1_hmac(k, p), auth_key, packet, index, end);
            }
            Protection::Gcm { key, salt } => {
                // RFC 7714 §8.1; AeadAes256Gcm's layout is the same.
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, seq);
                let (header, payload) = packet.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&*header), payload)
                    .map_err(|e| SrtpError::Cipher(e.to_string()))?;
                packet.extend_from_slice(tag.as_ref());
            }
        }
        Ok(())
    }

    /// Protects one (compound) RTCP packet into `out` with the next SRTCP index (always encrypted).
    pub fn protect_rtcp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::Short { len: packet.len(), header: 8 });
        }
        let index = self.srtcp_index;
        self.srtcp_index = (index + 1) & 0x7fff_ffff;
        let e_index = (0x8000_0000 | index).to_be_bytes();
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let (head, body) = packet.split_at(8);
        out.clear();
        out.extend_from_slice(head);
        let end = packet.len();
        match &mut self.rtcp {
            Protection::CmSha1 { cipher, salt, auth_key } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, u64::from(index));
                out.resize(end + CTR_PADDING.max(SRTCP_INDEX_LEN + Aes128CmSha1_80::HMAC_TAG_LEN), 0);
                cipher.encrypt(&iv, body, &mut out[8..]).map_err(|e| SrtpError::Cipher(e.to_string()))?;
                out[end..end + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                out.truncate(end + SRTCP_INDEX_LEN + Aes128CmSha1_80::HMAC_TAG_LEN);
                let hmac = self.hmac;
                Aes128CmSha1_80::rtcp_hmac(|k, p| hmac.sha1_hmac(k, p), auth_key, out, end + SRTCP_INDEX_LEN);
            }
            Protection::Gcm { key, salt } => {
                let iv = AeadAes256Gcm::rtcp_iv(*salt, ssrc, index);
                let aad = rtcp_aad(head, e_index);
                out.extend_from_slice(body);
                let tag = key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&aad[..]), &mut out[8..])
                    .map_err(|e| SrtpError::Cipher(e.to_string()))?;
                out.extend_from_slice(tag.as_ref());
                out.extend_from_slice(&e_index);
            }
        }
        Ok(())
    }
}

/// RFC 7714 §9.1: the first 8 octets, then the E flag and SRTCP index.
fn rtcp_aad(head: &[u8], e_index: [u8; 4]) -> [u8; 12] {
    let mut aad = [0; 12];
    aad[..8].copy_from_slice(head);
    aad[8..].copy_from_slice(&e_index);
    aad
}

impl Protection {
    /// Session keys for one of RTP/RTCP, `labels` = (cipher key, auth key, salt).
    fn derive(srtp: &dyn SrtpProvider, profile: SrtpProfile, master: &[u8], salt: &[u8], labels: [u8; 3]) -> Result<Self, SrtpError> {
        let [key_label, auth_label, salt_label] = labels;
        match profile {
            SrtpProfile::Aes128CmSha1_80 => {
                let (mut key, mut salt_out, mut auth_key) = ([0; 16], [0; 14], [0; 20]);
                kdf(srtp, master, salt, key_label, &mut key);
                kdf(srtp, master, salt, auth_label, &mut auth_key);
                kdf(srtp, master, salt, salt_label, &mut salt_out);
                let cipher = srtp.aes_128_cm_sha1_80().create_cipher(key, true);
                Ok(Self::CmSha1 { cipher, salt: salt_out, auth_key })
            }
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => {
                let (mut key, mut salt_out) = ([0; 32], [0; 12]);
                let key = &mut key[..profile.key_len()];
                kdf(srtp, master, salt, key_label, key);
                kdf(srtp, master, salt, salt_label, &mut salt_out);
                let alg = if profile == SrtpProfile::AeadAes128Gcm { &AES_128_GCM } else { &AES_256_GCM };
                let key = UnboundKey::new(alg, key).map_err(|e| SrtpError::Cipher(e.to_string()))?;
                Ok(Self::Gcm { key: LessSafeKey::new(key), salt: salt_out })
            }
        }
    }
}

/// RFC 3711 §4.3.1 with the AES-CM PRF (§4.3.3; AES-256 for 256-bit master keys, RFC 6188/7714), key
/// derivation rate 0: block i of the output is AES(master, (salt ⊕ label at octet 7) ‖ i), salt left-aligned.
fn kdf(srtp: &dyn SrtpProvider, master: &[u8], salt: &[u8], label: u8, out: &mut [u8]) {
    let mut input = [0u8; 16];
    input[..salt.len()].copy_from_slice(salt);
    input[7] ^= label;
    let mut block = [0u8; 32];
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        input[14..].copy_from_slice(&(i as u16).to_be_bytes());
        if master.len() == 32 {
            srtp.srtp_aes_256_ecb_round(master, &input, &mut block);
        } else {
            srtp.srtp_aes_128_ecb_round(master, &input, &mut block);
        }
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn crypto() -> CryptoProvider {
        str0m::crypto::from_feature_flags()
    }

    #[test]
    fn key_derivation_matches_rfc_3711_appendix_b3() {
        let srtp = crypto().srtp_provider;
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let (mut key, mut salt_out, mut auth) = ([0u8; 16], [0u8; 14], [0u8; 20]);
        kdf(srtp, &master, &salt, LABEL_RTP_KEY, &mut key);
        kdf(srtp, &master, &salt, LABEL_RTP_SALT, &mut salt_out);
        kdf(srtp, &master, &salt, LABEL_RTP_AUTH, &mut auth);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        assert_eq!(salt_out.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(auth.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    }

    /// The plaintext of the known answers: marker, PT 96, seq, timestamp 0xdecafbad, SSRC 0xcafebabe, 40
    /// payload bytes 0..40.
    fn rtp(seq: u16, marker: bool) -> Vec<u8> {
        let mut p = vec![0x80, u8::from(marker) << 7 | 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&0xdeca_fbad_u32.to_be_bytes());
        p.extend_from_slice(&0xcafe_babe_u32.to_be_bytes());
        p.extend((0..40).map(|b| b as u8));
        p
    }

    /// A sender report of SSRC 0xcafebabe.
    const SR: &str = "80c80006cafebabe1122334455667788decafbad0000000a000003e8";

    /// Known answers from libsrtp 2 (pylibsrtp 1.0.0), outbound session with master key 00 01 02 … and master
    /// salt 40 41 42 … (libsrtp takes key ‖ salt): three RTP packets (seq 0x1234; 0xffff without marker; 0x0000
    /// after it, rollover counter 1) and one SRTCP packet (libsrtp's first index, 1).
    struct Known {
        profile: SrtpProfile,
        key_salt: &'static str,
        rtp: [&'static str; 3],
        rtcp: &'static str,
    }

    const KNOWN: [Known; 3] = [
        Known {
            profile: SrtpProfile::Aes128CmSha1_80,
            key_salt: "000102030405060708090a0b0c0d0e0f404142434445464748494a4b4c4d",
            rtp: [
                "80e01234decafbadcafebabeaa2c05cab1a4b3153f4e5bffb65bd6b9fa52905ef5fefb184f8c238dd5aa870190c167a024fc58c2924b5f8c17ace2f14737",
                "8060ffffdecafbadcafebabef5716ce35b927899dddc0083d2aa04c0782d058a2041b74085521cd34b1d0ad6557ea456b58fb4f154e49d6805bc63435154",
                "80e00000decafbadcafebabe59e51ad8729e276c67cb908c0dc8ec2a9207baa75f49c9adef125d3a97cd274cd2f19489d678b40fd574638a4bc4b5adbc86",
            ],
            rtcp: "80c80006cafebabe06d4c989136cb842373f6f408c4ee5112616bf8d800000013704020bc771f3682fa2",
        },
        Known {
            profile: SrtpProfile::AeadAes128Gcm,
            key_salt: "000102030405060708090a0b0c0d0e0f404142434445464748494a4b",
            rtp: [
                "80e01234decafbadcafebabe6ea04d8e57395f18e7a4f4535fec07797241f91d5d75453a7b025a4907c8dab8f326a888fd0cf8e134f73b86544d8fcfbfe23ac3b591ca69",
                "8060ffffdecafbadcafebabe69ff606a68584200bf73e5b6c25918588fe1ff59f8419d7caf0186a5fbf497e8737cf1298397d57c58d32644a1beda3873fe99e4493fa28a",
                "80e00000decafbadcafebabe12c6eef06c85065e93451a6f0e0141abc2ca32c793cd273b90a1f3340e842f3ef82038d762ba62b957a7b1a0985828008899651fc0a27338",
            ],
            rtcp: "80c80006cafebabea683cb384bfe27b6d1aeba398196a315029b2f4388a3b343905d6c94f344ec5b266d6b0880000001",
        },
        Known {
            profile: SrtpProfile::AeadAes256Gcm,
            key_salt: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f404142434445464748494a4b",
            rtp: [
                "80e01234decafbadcafebabee145b5fa33c00149814ad457d0a1d3206816d9ed1c8b9690db6f126a9826c807f47ff924870a8c5591fefbb1bd0f5fa92d3c615279485b01",
                "8060ffffdecafbadcafebabe94682a808f4b744a473d3e4da62204d7eb828f258234bcc4a2325813de87254658962de90ee8f7cf00357572c2b274aa45a474d585a706e3",
                "80e00000decafbadcafebabee52535c1477833baf9165f5334ff33ead711baaf0e1c7b8c8fde6119dd5850b497782ff1a448cef06b38afff7a11e0e09ef47ab3a916819b",
            ],
            rtcp: "80c80006cafebabe6b57caf29a9f60fcb6edc3c79676a5bdab1eb8ce8a6a3b39739cd8b3c4cd5981c18a1e4580000001",
        },
    ];

    /// DTLS-SRTP keying material in which `side` (active = client) has the given master key and salt and the
    /// other side something else.
    fn material(profile: SrtpProfile, key_salt: &[u8], active: bool) -> Vec<u8> {
        let (kl, sl) = (profile.key_len(), profile.salt_len());
        let mut m = vec![0xee; profile.keying_material_len()];
        let (key_at, salt_at) = if active { (0, 2 * kl) } else { (kl, 2 * kl + sl) };
        m[key_at..key_at + kl].copy_from_slice(&key_salt[..kl]);
        m[salt_at..salt_at + sl].copy_from_slice(&key_salt[kl..]);
        m
    }

    #[test]
    fn protects_like_libsrtp_for_every_profile_and_side() {
        let crypto = crypto();
        for k in &KNOWN {
            for active in [true, false] {
                let m = material(k.profile, &hex(k.key_salt), active);
                let mut ctx = SrtpSendContext::new(&crypto, k.profile, &m, active).expect("context");
                let mut out = Vec::new();
                for (i, (seq, marker, index)) in [(0x1234, true, 0x1234), (0xffff, false, 0xffff), (0, true, 0x1_0000)].into_iter().enumerate() {
                    ctx.protect_rtp(&rtp(seq, marker), 12, index, &mut out).expect("protect");
                    assert_eq!(out, hex(k.rtp[i]), "{:?} active={active} rtp {i}", k.profile);
                    assert_eq!(out.len(), 12 + 40 + k.profile.rtp_overhead());
                }
                ctx.protect_rtcp(&hex(SR), &mut out).expect("protect rtcp");
                assert_eq!(out, hex(k.rtcp), "{:?} active={active} rtcp", k.profile);
            }
        }
    }

    #[test]
    fn srtcp_index_advances_and_wraps_at_31_bits() {
        let crypto = crypto();
        let k = &KNOWN[1];
        let mut ctx = SrtpSendContext::new(&crypto, k.profile, &material(k.profile, &hex(k.key_salt), true), true).unwrap();
        let mut out = Vec::new();
        ctx.protect_rtcp(&hex(SR), &mut out).unwrap();
        let first = out.clone();
        ctx.protect_rtcp(&hex(SR), &mut out).unwrap();
        assert_ne!(out, first, "a second SR is not encrypted with the same IV");
        assert_eq!(out[out.len() - 4..], [0x80, 0, 0, 2]);
        ctx.srtcp_index = 0x7fff_ffff;
        ctx.protect_rtcp(&hex(SR), &mut out).unwrap();
        assert_eq!(out[out.len() - 4..], [0xff, 0xff, 0xff, 0xff]);
        ctx.protect_rtcp(&hex(SR), &mut out).unwrap();
        assert_eq!(out[out.len() - 4..], [0x80, 0, 0, 0]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let crypto = crypto();
        let p = SrtpProfile::AeadAes256Gcm;
        assert_eq!(
            SrtpSendContext::new(&crypto, p, &[0; 10], true).err(),
            Some(SrtpError::MaterialLength { profile: p, expected: 88, got: 10 })
        );
        let mut ctx = SrtpSendContext::new(&crypto, p, &[1; 88], false).unwrap();
        let mut out = Vec::new();
        assert!(matches!(ctx.protect_rtp(&[0x80; 8], 12, 0, &mut out), Err(SrtpError::Short { .. })));
        assert!(matches!(ctx.protect_rtp(&rtp(5, false), 60, 5, &mut out), Err(SrtpError::Short { .. })));
        assert_eq!(ctx.protect_rtp(&rtp(5, false), 12, 6, &mut out), Err(SrtpError::IndexMismatch { index: 6, seq: 5 }));
        assert!(matches!(ctx.protect_rtcp(&[0x80, 200, 0], &mut out), Err(SrtpError::Short { .. })));
        // A header-only packet (no payload) is fine.
        ctx.protect_rtp(&rtp(5, false)[..12], 12, 5, &mut out).unwrap();
        assert_eq!(out.len(), 12 + p.rtp_overhead());
    }
}
