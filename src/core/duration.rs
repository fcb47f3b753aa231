//! Go-style duration strings (`15m`, `1h30m`, `720h`, `0s`), the format
//! Kubernetes users already know from cert-manager and kubectl flags.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `<digits><unit>…` with units `ms`, `s`, `m`, `h`.
    #[error("{0:?} is not a duration: use digits followed by ms, s, m or h, e.g. 15m or 1h30m")]
    Syntax(String),
    /// Larger than any sensible lifetime.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parse a Go-style duration made of integer components.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(input.to_owned());
    if input.is_empty() {
        return Err(syntax());
    }
    let mut total_ms: u64 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(syntax());
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow(input.to_owned()))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(syntax());
        };
        rest = &rest[len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Render a duration the way users write it (`1h30m`, `15m`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let cases: &[(&str, u64)] = &[
            ("0s", 0),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("720h", 2_592_000_000),
            ("250ms", 250),
            ("1m1s1ms", 61_001),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(*ms)), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for s in [
            "",
            "h",
            "15",
            "1d",
            "-1h",
            "1.5h",
            "1h ",
            " 1h",
            "1H",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0s", "15m", "1h30m", "720h", "1m1s1ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
