//! Which of a publisher's RTP streams is forwarded, per kind.
//!
//! A viewer gets one audio and one video track, and each viewer track numbers its packets from one source
//! (`seq_rewrite.rs`). A publisher may send more than one stream of a kind: simulcast (one SSRC per layer,
//! `a=simulcast`, until layer selection exists), a second video track, or a new SSRC after renegotiation.
//! Forwarding them all into one track would interleave unrelated sequence numbers: the decoder gets garbage,
//! and two packets could be written with the same SRTP index and different content (a reused keystream).
//! So each kind is locked to one SSRC: the first whose packets arrive. Another SSRC takes over only after
//! the locked one was silent for [`SSRC_SWITCH_SILENCE`]; the publisher's packets of *both* kinds then carry
//! a new source id (the viewers' rewriters re-base and, for video, wait for a keyframe, which is requested).
//! One source per publisher at any time keeps the rest simple: a cascade node takes a new source for a
//! re-publish, and two kinds with different sources would look like a re-publish every other packet.

use std::time::{Duration, Instant};

use crate::packet::TrackKind;

/// How long the forwarded SSRC of a kind must be silent before another one replaces it.
pub const SSRC_SWITCH_SILENCE: Duration = Duration::from_secs(1);

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsrcVerdict {
    /// Forward it as source `source`; `switched`: this SSRC just replaced another (ask for a keyframe).
    Forward { source: u64, switched: bool },
    /// Another SSRC of this kind is forwarded; `first`: the first packet seen from this one (log it).
    Ignore { first: bool },
}

#[derive(Debug, Clone, Copy)]
struct Locked {
    ssrc: u32,
    last: Instant,
}

/// At most this many ignored SSRCs are remembered (only to log each once).
const IGNORED_MAX: usize = 16;

/// Per kind (audio, video): the forwarded SSRC; the SSRCs ignored so far; how many switches happened.
#[derive(Debug, Default)]
pub struct SsrcLock {
    locked: [Option<Locked>; 2],
    ignored: Vec<u32>,
    generation: u64,
}

impl SsrcLock {
    /// Decides for a packet of `kind` from `ssrc` arriving at `now`; `base` is the publisher's source id.
    /// The forwarded source is `base` for the first SSRC of a kind and differs for every later one.
    pub fn check(&mut self, kind: TrackKind, ssrc: u32, now: Instant, base: u64) -> SsrcVerdict {
        let slot = &mut self.locked[kind as usize];
        let switched = match slot {
            Some(l) if l.ssrc == ssrc => {
                l.last = l.last.max(now);
                return SsrcVerdict::Forward { source: source_of(base, self.generation), switched: false };
            }
            Some(l) if now.saturating_duration_since(l.last) < SSRC_SWITCH_SILENCE => {
                let first = !self.ignored.contains(&ssrc) && self.ignored.len() < IGNORED_MAX;
                if first {
                    self.ignored.push(ssrc);
                }
                return SsrcVerdict::Ignore { first };
            }
            Some(_) => true,
            None => false,
        };
        *slot = Some(Locked { ssrc, last: now });
        self.ignored.retain(|s| *s != ssrc);
        if switched {
            self.generation += 1;
        }
        SsrcVerdict::Forward { source: source_of(base, self.generation), switched }
    }

    /// The SSRC forwarded for `kind`, if any.
    pub fn forwarded(&self, kind: TrackKind) -> Option<u32> {
        self.locked[kind as usize].map(|l| l.ssrc)
    }
}

/// Sources are unique per node with the core in the top byte and a counter below (`room.rs`); a switch
/// generation goes in bits 40..56, far above any counter a node reaches.
fn source_of(base: u64, generation: u64) -> u64 {
    base ^ ((generation & 0xffff) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = (1 << 56) | 7;

    #[test]
    fn first_ssrc_of_each_kind_is_forwarded_as_the_base_source() {
        let t = Instant::now();
        let mut l = SsrcLock::default();
        assert_eq!(l.check(TrackKind::Video, 10, t, BASE), SsrcVerdict::Forward { source: BASE, switched: false });
        assert_eq!(l.check(TrackKind::Audio, 20, t, BASE), SsrcVerdict::Forward { source: BASE, switched: false });
        assert_eq!(l.check(TrackKind::Video, 10, t, BASE), SsrcVerdict::Forward { source: BASE, switched: false });
        assert_eq!((l.forwarded(TrackKind::Video), l.forwarded(TrackKind::Audio)), (Some(10), Some(20)));
    }

    /// Simulcast: three layers interleaved; only the first is forwarded, the others are reported once.
    #[test]
    fn other_ssrcs_of_a_kind_are_ignored_while_the_locked_one_flows() {
        let t = Instant::now();
        let mut l = SsrcLock::default();
        assert!(matches!(l.check(TrackKind::Video, 1, t, BASE), SsrcVerdict::Forward { .. }));
        for i in 0..30u64 {
            let now = t + Duration::from_millis(33 * i);
            assert!(matches!(l.check(TrackKind::Video, 1, now, BASE), SsrcVerdict::Forward { .. }));
            assert_eq!(l.check(TrackKind::Video, 2, now, BASE), SsrcVerdict::Ignore { first: i == 0 });
            assert_eq!(l.check(TrackKind::Video, 3, now, BASE), SsrcVerdict::Ignore { first: i == 0 });
        }
        assert_eq!(l.forwarded(TrackKind::Video), Some(1));
    }

    /// The publisher moved to a new SSRC: after the old one's silence the new one takes over as a new
    /// source, and only then.
    #[test]
    fn a_new_ssrc_takes_over_after_the_old_one_fell_silent() {
        let t = Instant::now();
        let mut l = SsrcLock::default();
        l.check(TrackKind::Video, 1, t, BASE);
        let soon = t + SSRC_SWITCH_SILENCE / 2;
        assert_eq!(l.check(TrackKind::Video, 2, soon, BASE), SsrcVerdict::Ignore { first: true });
        let later = t + SSRC_SWITCH_SILENCE;
        let SsrcVerdict::Forward { source, switched: true } = l.check(TrackKind::Video, 2, later, BASE) else {
            panic!("the new SSRC did not take over");
        };
        assert_ne!(source, BASE);
        assert_eq!(source & 0xff00_00ff_ffff_ffff, BASE, "core byte and counter kept");
        assert_eq!(l.check(TrackKind::Video, 2, later, BASE), SsrcVerdict::Forward { source, switched: false });
        // The old SSRC is now the other one.
        assert_eq!(l.check(TrackKind::Video, 1, later, BASE), SsrcVerdict::Ignore { first: true });
        // Audio, locked before, carries the new source too: one source per publisher at any time.
        assert_eq!(l.check(TrackKind::Audio, 20, later, BASE), SsrcVerdict::Forward { source, switched: false });
    }

    #[test]
    fn sources_stay_one_per_publisher_and_ignored_ssrcs_are_bounded() {
        let t = Instant::now();
        let mut l = SsrcLock::default();
        l.check(TrackKind::Audio, 20, t, BASE);
        l.check(TrackKind::Video, 1, t, BASE);
        let firsts = (100..200u32).filter(|s| l.check(TrackKind::Video, *s, t, BASE) == SsrcVerdict::Ignore { first: true }).count();
        assert_eq!(firsts, IGNORED_MAX);
        // Audio switches: video's packets move to the new source with it.
        let later = t + SSRC_SWITCH_SILENCE;
        let SsrcVerdict::Forward { source, switched: true } = l.check(TrackKind::Audio, 21, later, BASE) else { panic!() };
        assert_eq!(l.check(TrackKind::Video, 1, later, BASE), SsrcVerdict::Forward { source, switched: false });
    }
}
