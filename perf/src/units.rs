//! Command-line units: bitrates (`1000k`), durations (`10s`, `500ms`, `2m`) and rates (`50/s`).

use std::time::Duration;

pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim().trim_end_matches("bps").trim_end_matches("bit/s");
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad bitrate {s:?} (try 1000k, 2.5M)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err("bitrate must be positive".into());
    }
    Ok((v * mul) as u64)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    if v.is_nan() || v < 0.0 {
        return Err("duration must not be negative".into());
    }
    Ok(Duration::from_secs_f64(v * mul))
}

pub fn parse_ramp(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    let v: f64 = n.parse().map_err(|_| format!("bad rate {s:?} (try 50/s)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err("rate must be positive".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_bitrate("1000k"), Ok(1_000_000));
        assert_eq!(parse_bitrate("2.5M"), Ok(2_500_000));
        assert_eq!(parse_bitrate("800000"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_ramp("50/s"), Ok(50.0));
        assert!(parse_ramp("0/s").is_err());
    }
}
