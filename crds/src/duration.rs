//! Durations as users write them in a spec: `30s`, `2m`, `1h30m`, `0s`.
//!
//! A subset of Go's `time.ParseDuration` (what `kubectl` users know from
//! other fields): one or more whole numbers, each with a unit of `s`, `m` or
//! `h`, largest first, at most 24 hours in all. Fractions, `ms` and signs
//! are refused, since a failover delay is a matter of seconds.
//!
//! Ages ([`parse_age`], the `maxAge` of backup retention) also take days,
//! `d` (24 hours; Go has no such unit, but retention is counted in days):
//! `30d`, `12h`, `7d12h`, at most 3650 days.

use std::time::Duration;

/// The longest duration accepted.
pub const MAX: Duration = Duration::from_secs(24 * 3600);

/// Why a text is not a duration; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a duration such as 30s, 2m or 1h30m (whole numbers with s, m or h, largest unit first, at most 24h)")]
pub struct DurationError;

/// The longest age accepted: ten years.
pub const MAX_AGE: Duration = Duration::from_secs(3650 * 86_400);

/// Why a text is not an age; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be a duration such as 30d, 12h or 7d12h (whole numbers with d, h, m or s, largest unit first, at most \
     3650d)"
)]
pub struct AgeError;

/// Parses `text`, e.g. `90s` or `1m30s`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_units(text, false, MAX).ok_or(DurationError)
}

/// Parses an age, e.g. `30d`, `12h` or `7d12h`.
pub fn parse_age(text: &str) -> Result<Duration, AgeError> {
    parse_units(text, true, MAX_AGE).ok_or(AgeError)
}

fn parse_units(text: &str, days: bool, max: Duration) -> Option<Duration> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    let mut total: u64 = 0;
    let mut last_unit = u64::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 6 {
            return None;
        }
        let (number, tail) = rest.split_at(digits);
        let unit = match tail.bytes().next() {
            Some(b'd') if days => 86_400,
            Some(b'h') => 3600,
            Some(b'm') => 60,
            Some(b's') => 1,
            _ => return None,
        };
        if unit >= last_unit {
            return None;
        }
        last_unit = unit;
        let value: u64 = number.parse().ok()?;
        total = total.saturating_add(value.saturating_mul(unit));
        rest = &tail[1..];
    }
    let duration = Duration::from_secs(total);
    (duration <= max).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let rows: &[(&str, Option<u64>)] = &[
            ("0s", Some(0)),
            ("30s", Some(30)),
            ("2m", Some(120)),
            ("1h30m", Some(5400)),
            ("1m30s", Some(90)),
            ("24h", Some(86_400)),
            ("25h", None),
            ("30", None),
            ("", None),
            ("-5s", None),
            ("1.5s", None),
            ("500ms", None),
            ("30s1m", None),
            ("1m1m", None),
            ("s", None),
            ("9999999s", None),
            ("30S", None),
            (" 30s", None),
            ("1d", None),
        ];
        for (text, want) in rows {
            assert_eq!(parse(text).ok().map(|d| d.as_secs()), *want, "{text:?}");
        }
    }

    #[test]
    fn ages_table() {
        let rows: &[(&str, Option<u64>)] = &[
            ("30d", Some(30 * 86_400)),
            ("12h", Some(12 * 3600)),
            ("7d12h", Some(7 * 86_400 + 12 * 3600)),
            ("1d1h1m1s", Some(86_400 + 3661)),
            ("0d", Some(0)),
            ("0s", Some(0)),
            ("3650d", Some(3650 * 86_400)),
            ("3651d", None),
            ("87601h", None),
            ("12h1d", None),
            ("1w", None),
            ("30D", None),
            ("1.5d", None),
            ("-1d", None),
            ("d", None),
            ("", None),
        ];
        for (text, want) in rows {
            assert_eq!(parse_age(text).ok().map(|d| d.as_secs()), *want, "{text:?}");
        }
    }
}
