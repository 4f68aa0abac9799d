//! Rational polyphase resampler (windowed sinc, Kaiser window) for interleaved f32 audio.
//!
//! Converts `in_rate` → `out_rate` by the exact ratio L/M (reduced by their gcd: 44100 → 48000 is
//! 160/147), so there is no drift and no accumulated rounding. Each output sample is a dot product of
//! `TAPS` input samples with one of L precomputed filter phases; the cutoff sits just below the lower of
//! the two Nyquist frequencies. Written here instead of pulling `rubato` (and `rustfft`) into the build:
//! the conversions needed (AAC rates ≤ 96 kHz → 48 kHz) only need this.

/// Taps per phase (in input samples). 32 gives > 80 dB stop-band with the Kaiser β below.
const TAPS: usize = 32;
const KAISER_BETA: f64 = 8.6;
/// Cutoff as a fraction of the lower Nyquist frequency (leaves room for the transition band).
const CUTOFF: f64 = 0.92;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Modified Bessel function of the first kind, order 0 (series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..64 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

/// Streaming resampler for one stream of `channels` interleaved channels.
#[derive(Debug, Clone)]
pub struct Resampler {
    channels: usize,
    up: usize,
    down: usize,
    /// `up` phases × `TAPS` coefficients; phase p applies to inputs t, t-1, .., t-TAPS+1.
    table: Vec<f32>,
    /// Input history (interleaved), starting with TAPS-1 frames of context.
    history: Vec<f32>,
    /// Frame index (within `history`) of the next output's newest input, and its phase.
    index: usize,
    phase: usize,
}

impl Resampler {
    /// None if a rate is 0 or the reduced ratio needs an unreasonably large table (> 1024 phases).
    pub fn new(in_rate: u32, out_rate: u32, channels: usize) -> Option<Self> {
        if in_rate == 0 || out_rate == 0 || channels == 0 {
            return None;
        }
        let g = gcd(in_rate as u64, out_rate as u64);
        let up = (out_rate as u64 / g) as usize;
        let down = (in_rate as u64 / g) as usize;
        if up > 1024 {
            return None;
        }
        // Prototype low-pass at the upsampled rate (in_rate * up), cutoff in cycles/sample.
        let n = up * TAPS;
        let fc = CUTOFF * 0.5 / up.max(down) as f64;
        let center = (n as f64 - 1.0) / 2.0;
        let i0_beta = bessel_i0(KAISER_BETA);
        let proto: Vec<f64> = (0..n)
            .map(|j| {
                let x = j as f64 - center;
                let sinc = if x == 0.0 {
                    2.0 * fc
                } else {
                    (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
                };
                let r = 2.0 * j as f64 / (n as f64 - 1.0) - 1.0;
                let w = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
                sinc * w
            })
            .collect();
        let mut table = vec![0f32; n];
        for p in 0..up {
            let coefs: Vec<f64> = (0..TAPS).map(|k| proto[p + k * up]).collect();
            let sum: f64 = coefs.iter().sum();
            // Unity DC gain per phase.
            let norm = if sum.abs() > 1e-9 { 1.0 / sum } else { up as f64 };
            for (k, c) in coefs.iter().enumerate() {
                table[p * TAPS + k] = (c * norm) as f32;
            }
        }
        Some(Resampler {
            channels,
            up,
            down,
            table,
            history: vec![0.0; (TAPS - 1) * channels],
            index: TAPS - 1,
            phase: 0,
        })
    }

    /// True when in and out rates are equal (output = input).
    pub fn is_passthrough(&self) -> bool {
        self.up == 1 && self.down == 1
    }

    /// Resamples interleaved `input` and appends the interleaved output to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let ch = self.channels;
        if self.is_passthrough() {
            out.extend_from_slice(&input[..input.len() / ch * ch]);
            return;
        }
        self.history.extend_from_slice(&input[..input.len() / ch * ch]);
        let frames = self.history.len() / ch;
        while self.index < frames {
            let coefs = &self.table[self.phase * TAPS..(self.phase + 1) * TAPS];
            for c in 0..ch {
                let mut acc = 0f32;
                for (k, &h) in coefs.iter().enumerate() {
                    acc += h * self.history[(self.index - k) * ch + c];
                }
                out.push(acc);
            }
            self.phase += self.down;
            self.index += self.phase / self.up;
            self.phase %= self.up;
        }
        // Keep TAPS-1 frames of context before the next output's newest input.
        let keep_from = self.index.saturating_sub(TAPS - 1).min(frames);
        self.history.drain(..keep_from * ch);
        self.index -= keep_from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, secs: f64, channels: usize) -> Vec<f32> {
        let n = (rate as f64 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                std::iter::repeat_n(
                    (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32 * 0.5,
                    channels,
                )
            })
            .collect()
    }

    /// Amplitude of `freq` in `x` (one channel) by correlation.
    fn tone_amplitude(x: &[f32], rate: u32, freq: f64) -> f64 {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64;
            s += v as f64 * ph.sin();
            c += v as f64 * ph.cos();
        }
        2.0 * (s * s + c * c).sqrt() / x.len() as f64
    }

    #[test]
    fn length_and_tone_are_preserved_for_common_rates() {
        for in_rate in [8000, 11025, 16000, 22050, 24000, 32000, 44100, 7350, 96000] {
            let mut r = Resampler::new(in_rate, 48000, 1).unwrap();
            let input = sine(in_rate, 440.0, 1.0, 1);
            let mut out = Vec::new();
            // In uneven pieces, as decoded frames arrive.
            for piece in input.chunks(1000) {
                r.process(piece, &mut out);
            }
            let expected = 48000.0;
            assert!((out.len() as f64 - expected).abs() <= 48.0, "{in_rate}: {} samples", out.len());
            let amp = tone_amplitude(&out[4800..], 48000, 440.0);
            assert!((amp - 0.5).abs() < 0.01, "{in_rate}: amplitude {amp}");
        }
    }

    #[test]
    fn images_are_suppressed() {
        // 44.1k → 48k of a 15 kHz tone: nothing should appear at the image 48k - (44.1k - 15k) = 18.9 kHz.
        let mut r = Resampler::new(44100, 48000, 1).unwrap();
        let mut out = Vec::new();
        r.process(&sine(44100, 15000.0, 0.5, 1), &mut out);
        assert!((tone_amplitude(&out[2400..], 48000, 15000.0) - 0.5).abs() < 0.02);
        assert!(tone_amplitude(&out[2400..], 48000, 18900.0) < 0.001);
    }

    #[test]
    fn stereo_channels_stay_separate() {
        let mut r = Resampler::new(32000, 48000, 2).unwrap();
        let input: Vec<f32> = sine(32000, 440.0, 0.5, 1).iter().flat_map(|&v| [v, 0.0]).collect();
        let mut out = Vec::new();
        r.process(&input, &mut out);
        let right: Vec<f32> = out.iter().skip(1).step_by(2).copied().collect();
        assert!(right.iter().all(|v| v.abs() < 1e-6));
        assert_eq!(out.len() % 2, 0);
    }

    #[test]
    fn passthrough_and_bad_rates() {
        let mut r = Resampler::new(48000, 48000, 2).unwrap();
        assert!(r.is_passthrough());
        let mut out = Vec::new();
        r.process(&[1.0, 2.0, 3.0], &mut out);
        assert_eq!(out, vec![1.0, 2.0]);
        assert!(Resampler::new(0, 48000, 1).is_none());
        assert!(Resampler::new(44100, 48000, 0).is_none());
        assert!(Resampler::new(44101, 48000, 1).is_none(), "ratio too fine");
    }
}
