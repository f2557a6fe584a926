//! Durations as users write them in a spec: `30s`, `2m`, `1h30m`, `0s`.
//!
//! A subset of Go's `time.ParseDuration` (what `kubectl` users know from
//! other fields): one or more whole numbers, each with a unit of `s`, `m` or
//! `h`, largest first, at most 24 hours in all. Fractions, `ms` and signs
//! are refused, since a failover delay is a matter of seconds.

use std::time::Duration;

/// The longest duration accepted.
pub const MAX: Duration = Duration::from_secs(24 * 3600);

/// Why a text is not a duration; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a duration such as 30s, 2m or 1h30m (whole numbers with s, m or h, largest unit first, at most 24h)")]
pub struct DurationError;

/// Parses `text`, e.g. `90s` or `1m30s`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() || text.len() > 32 {
        return Err(DurationError);
    }
    let mut total: u64 = 0;
    let mut last_unit = u64::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 6 {
            return Err(DurationError);
        }
        let (number, tail) = rest.split_at(digits);
        let unit = match tail.bytes().next() {
            Some(b'h') => 3600,
            Some(b'm') => 60,
            Some(b's') => 1,
            _ => return Err(DurationError),
        };
        if unit >= last_unit {
            return Err(DurationError);
        }
        last_unit = unit;
        let value: u64 = number.parse().map_err(|_| DurationError)?;
        total = total.saturating_add(value.saturating_mul(unit));
        rest = &tail[1..];
    }
    let duration = Duration::from_secs(total);
    if duration > MAX { Err(DurationError) } else { Ok(duration) }
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
        ];
        for (text, want) in rows {
            assert_eq!(parse(text).ok().map(|d| d.as_secs()), *want, "{text:?}");
        }
    }
}
