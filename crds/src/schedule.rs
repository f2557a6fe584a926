//! Backup schedules: standard 5-field cron, evaluated in an IANA time zone.
//!
//! A schedule is exactly five fields, `minute hour day-of-month month
//! day-of-week`, as in crontab(5) and Kubernetes CronJobs:
//!
//! | field        | values                      | names      |
//! |--------------|-----------------------------|------------|
//! | minute       | 0-59                        |            |
//! | hour         | 0-23                        |            |
//! | day of month | 1-31                        |            |
//! | month        | 1-12                        | JAN-DEC    |
//! | day of week  | 0-7 (0 and 7 are Sunday)    | SUN-SAT    |
//!
//! Each field is `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! comma-separated list of those; names are case-insensitive. The macros
//! `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and
//! `@hourly` stand for `0 0 1 1 *`, `0 0 1 * *`, `0 0 * * 0`, `0 0 * * *` and
//! `0 * * * *`.
//!
//! Refused, with a message saying what to write instead:
//! - six or seven fields (a seconds or a year field): CloudNativePG read a
//!   5-field schedule as 6 fields with seconds, so `0 3 * * *` fired every
//!   hour; here the count is checked before anything else;
//! - four fields or fewer, or an unknown macro;
//! - the non-standard extensions of some schedulers (`?`, `L`, `W`, `#`, a
//!   leading `+`), and `a/n` without a range (write `a-59/n`);
//! - a schedule that never fires (`0 0 31 2 *`, `0 0 30 2 *`).
//!
//! Day of month and day of week combine as in Vixie cron: when both are
//! restricted (neither starts with `*`) a day matches either; when one of
//! them starts with `*` (`*` itself, or a step such as `*/2`) a day must
//! match both.
//!
//! Evaluation uses the `croner` crate on `jiff` (the tz database is bundled,
//! so a container without /usr/share/zoneinfo knows every zone). This module
//! checks the grammar itself and hands croner only what it accepts, and it
//! corrects croner where its semantics differ from Vixie cron: croner ANDs the
//! two day fields only when one is exactly `*`, so a `*/2` day of month with a
//! restricted day of week is given to croner with its `+` (AND) modifier.
//! `tests/schedule.rs` proves croner against a brute-force matcher of this
//! grammar.
//!
//! Daylight saving time, as croner and Vixie cron handle it (local wall
//! clock): a fixed time that falls in a gap (02:30 on the night clocks jump
//! from 02:00 to 03:00) fires once, at the first instant after the gap; a
//! fixed time in an overlap (02:30 on the night 03:00 goes back to 02:00)
//! fires once, at its first occurrence; a wildcard or stepped minute or hour
//! (`*/20 2 * * *`) skips the times in a gap and fires at each of the
//! repeated times in an overlap.
//!
//! Everything here is pure: the instant to count from is always a parameter.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// The time zone of a schedule that names none.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Schedules that fire more often than this are admitted with a warning.
pub const FREQUENT: Duration = Duration::from_secs(15 * 60);

/// How far ahead (and back) a fire time is searched for: 28 years, the cycle
/// after which the Gregorian calendar's weekdays repeat, so even a day that
/// must be both a given date and a given weekday (`*/29` with `1`) is found.
/// A schedule whose days name no existing date (`0 0 31 2 *`) is recognised
/// without any search; the horizon is the bound of every search.
pub const HORIZON_YEARS: i16 = 28;

/// The macros accepted in place of five fields, and what they stand for.
pub const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// An example that every refusal shows.
pub const EXAMPLE: &str = "\"0 3 * * *\" (03:00 every day) or \"30 1 * * SUN\" (01:30 every Sunday)";

/// Why a text is not a schedule; each message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "has {count} field{plural}; a schedule is exactly 5 fields, minute hour day-of-month month day-of-week \
         (no seconds, no year), such as {EXAMPLE}",
        plural = if *count == 1 { "" } else { "s" }
    )]
    FieldCount { count: usize },
    #[error(
        "{name} is not a macro; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly, or 5 fields \
         such as {EXAMPLE}"
    )]
    UnknownMacro { name: String },
    #[error("the {field} field {value:?} {reason}; a schedule is 5 fields such as {EXAMPLE}")]
    Field { field: &'static str, value: String, reason: String },
    #[error(
        "never fires: its day-of-month and month name no date that exists (such as February 30th); use a day \
         that exists, such as \"0 3 28 2 *\" (03:00 on February 28th) or \"0 3 1 3 *\" (03:00 on March 1st)"
    )]
    NeverFires,
    #[error("cannot be evaluated ({0}); a schedule is 5 fields such as {EXAMPLE}")]
    Evaluation(String),
}

/// Why a name is not a time zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "is not a time zone of the IANA database; use a name such as UTC, Europe/Berlin, America/New_York or \
     Asia/Tokyo (the default is UTC)"
)]
pub struct UnknownTimeZone;

/// The IANA time zone `name`, from the bundled database.
pub fn time_zone(name: &str) -> Result<TimeZone, UnknownTimeZone> {
    // Names are short; a path or a POSIX TZ string is not a name.
    if name.is_empty() || name.len() > 64 || name.starts_with(['/', ':', '.']) || name.contains("..") {
        return Err(UnknownTimeZone);
    }
    TimeZone::get(name).map_err(|_| UnknownTimeZone)
}

/// One field of the grammar.
struct FieldSpec {
    name: &'static str,
    min: u8,
    max: u8,
    /// Names of the values from `min` on, when the field has names.
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: FieldSpec = FieldSpec { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: FieldSpec = FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
};
const DAY_OF_WEEK: FieldSpec =
    FieldSpec { name: "day-of-week", min: 0, max: 7, names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] };

/// A parsed 5-field schedule, without a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    text: String,
    /// Bit n: minute n.
    minutes: u64,
    /// Bit n: hour n.
    hours: u32,
    /// Bit n: day of month n (1-31).
    days: u32,
    /// Bit n: month n (1-12).
    months: u16,
    /// Bit n: weekday n, 0 = Sunday (7 is folded into 0).
    weekdays: u8,
    /// The day-of-month field starts with `*`.
    days_star: bool,
    /// The day-of-week field starts with `*`.
    weekdays_star: bool,
    cron: Cron,
}

impl Expression {
    /// Parses `text`: exactly 5 fields, or one macro.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let expanded = match words.as_slice() {
            [word] if word.starts_with('@') => MACROS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(word))
                .map(|(_, fields)| *fields)
                .ok_or_else(|| ScheduleError::UnknownMacro { name: (*word).to_owned() })?,
            _ if words.len() != 5 => return Err(ScheduleError::FieldCount { count: words.len() }),
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(ScheduleError::FieldCount { count: fields.len() });
        };
        let minutes = parse_field(minute, &MINUTE)?;
        let hours = parse_field(hour, &HOUR)?;
        let days = parse_field(dom, &DAY_OF_MONTH)?;
        let months = parse_field(month, &MONTH)?;
        let raw_weekdays = parse_field(dow, &DAY_OF_WEEK)?;
        let weekdays = ((raw_weekdays & 0x7f) | (raw_weekdays >> 7)) as u8;
        let (days_star, weekdays_star) = (dom.starts_with('*'), dow.starts_with('*'));
        let ored = !days_star && !weekdays_star;
        if !ored && !has_a_day(days as u32, months as u16) {
            return Err(ScheduleError::NeverFires);
        }
        // croner ANDs the day fields only when one is exactly `*`; Vixie cron
        // does so whenever one starts with `*`. The `+` modifier asks croner for AND.
        let and = (days_star || weekdays_star) && *dom != "*" && *dow != "*";
        let for_croner = format!("{minute} {hour} {dom} {month} {}{dow}", if and { "+" } else { "" });
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(&for_croner)
            .map_err(|e| ScheduleError::Evaluation(e.to_string()))?;
        Ok(Self {
            text: text.trim().to_owned(),
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays,
            days_star,
            weekdays_star,
            cron,
        })
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a local wall-clock minute matches, by the grammar above (the
    /// reference the croner evaluation is tested against).
    pub fn matches(&self, at: jiff::civil::DateTime) -> bool {
        let bit = |set: u64, n: i8| u8::try_from(n).is_ok_and(|n| n < 64 && set & (1 << n) != 0);
        let day = bit(u64::from(self.days), at.day());
        let weekday = bit(u64::from(self.weekdays), at.weekday().to_sunday_zero_offset());
        let day_ok = if self.days_star || self.weekdays_star { day && weekday } else { day || weekday };
        bit(self.minutes, at.minute())
            && bit(u64::from(self.hours), at.hour())
            && bit(u64::from(self.months), at.month())
            && day_ok
    }

    /// The shortest wall-clock time between two fires on the same day or on
    /// consecutive days; `None` when it fires at most once a day.
    pub fn min_interval(&self) -> Option<Duration> {
        let minutes: Vec<u32> = (0..60).filter(|m| self.minutes & (1 << m) != 0).collect();
        let hours: Vec<u32> = (0..24).filter(|h| self.hours & (1 << h) != 0).collect();
        let (first_minute, last_minute) = (*minutes.first()?, *minutes.last()?);
        let (first_hour, last_hour) = (*hours.first()?, *hours.last()?);
        let within_hour = minutes.windows(2).map(|w| w[1] - w[0]).min();
        let across_hours = hours.windows(2).map(|w| (w[1] - w[0]) * 60 - last_minute + first_minute).min();
        // From the last fire of one day to the first of the next.
        let across_days = (24 - last_hour + first_hour) * 60 - last_minute + first_minute;
        let shortest = [within_hour, across_hours, (minutes.len() * hours.len() > 1).then_some(across_days)]
            .into_iter()
            .flatten()
            .min()?;
        Some(Duration::from_secs(u64::from(shortest) * 60))
    }
}

/// Whether some date matches a day of month that is not ORed with a day of
/// week: one that exists in one of the months (February has 29 days in leap
/// years). An ANDed day of week removes none for good: over 28 years every
/// date falls on every weekday. (An ORed day of week fires every week.)
fn has_a_day(days: u32, months: u16) -> bool {
    const LONGEST: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    (1..=12u32).filter(|m| months & (1 << m) != 0).any(|m| {
        let existing = (1..=LONGEST[m as usize]).fold(0u32, |acc, d| acc | (1 << d));
        days & existing != 0
    })
}

/// Parses one field into a bit set, or says what is wrong with it.
fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, ScheduleError> {
    let fail = |reason: String| ScheduleError::Field { field: spec.name, value: text.to_owned(), reason };
    let mut set = 0u64;
    for item in text.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let step: u8 = step
                    .parse()
                    .ok()
                    .filter(|s| *s >= 1 && *s <= spec.max)
                    .ok_or_else(|| fail(format!("has step {step:?}; a step is a number from 1 to {}", spec.max)))?;
                (base, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if base == "*" {
            (spec.min, if spec.name == DAY_OF_WEEK.name { 6 } else { spec.max })
        } else if let Some((a, b)) = base.split_once('-') {
            let (a, mut b) = (value(a, spec).map_err(&fail)?, value(b, spec).map_err(&fail)?);
            // SUN ends a range as 7 (MON-SUN is every day), as 7 does.
            if spec.name == DAY_OF_WEEK.name && b == 0 && a > 0 {
                b = 7;
            }
            if a > b {
                return Err(fail(format!("has the range {base:?}, which runs backwards; write it low-high")));
            }
            (a, b)
        } else {
            let v = value(base, spec).map_err(&fail)?;
            if step.is_some() {
                return Err(fail(format!(
                    "steps from a single value ({item:?}); a step follows * or a range, such as \"*/{0}\" or \
                     \"{base}-{1}/{0}\"",
                    step.unwrap_or(1),
                    spec.max
                )));
            }
            (v, v)
        };
        let step = step.unwrap_or(1);
        let mut n = low;
        while n <= high {
            set |= 1 << n;
            n = match n.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
    }
    Ok(set)
}

/// One value of a field: a number in range, or a name where the field has names.
fn value(text: &str, spec: &FieldSpec) -> Result<u8, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u8>()
            .ok()
            .filter(|v| (spec.min..=spec.max).contains(v))
            .ok_or_else(|| format!("has {text}, outside {}-{}", spec.min, spec.max));
    }
    if let Some(index) = spec.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
        return u8::try_from(index).map(|i| i + spec.min).map_err(|e| e.to_string());
    }
    let extension = ["?", "L", "W", "#", "+"].iter().find(|x| text.to_ascii_uppercase().contains(**x));
    Err(match (extension, spec.names.is_empty()) {
        (Some(x), _) => format!("uses {x:?}, an extension of some schedulers that standard cron does not have"),
        (None, true) => format!("has {text:?}; the values are numbers from {} to {}", spec.min, spec.max),
        (None, false) => format!(
            "has {text:?}; the values are numbers from {} to {} or the names {}",
            spec.min,
            spec.max,
            spec.names.join(", ")
        ),
    })
}

/// A schedule in a time zone: when it fires.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: Expression,
    zone: TimeZone,
}

impl Schedule {
    pub fn new(expression: Expression, zone: TimeZone) -> Self {
        Self { expression, zone }
    }

    /// Parses both halves; the time zone defaults to UTC.
    pub fn parse(text: &str, zone: Option<&str>) -> Result<Self, ScheduleOrZoneError> {
        let expression = Expression::parse(text)?;
        let zone = time_zone(zone.unwrap_or(DEFAULT_TIME_ZONE))?;
        Ok(Self { expression, zone })
    }

    pub fn expression(&self) -> &Expression {
        &self.expression
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The first fire strictly after `after`, within [`HORIZON_YEARS`].
    pub fn next_after(&self, after: Timestamp) -> Option<Zoned> {
        let start = after.to_zoned(self.zone.clone());
        let limit = start.checked_add(i64::from(HORIZON_YEARS).years()).ok()?;
        self.expression
            .cron
            .find_next_occurrence(&start, false)
            .ok()
            .filter(|next| next.timestamp() <= limit.timestamp())
    }

    /// The last fire at or before `at`, within [`HORIZON_YEARS`].
    pub fn latest_at_or_before(&self, at: Timestamp) -> Option<Zoned> {
        let start = at.to_zoned(self.zone.clone());
        let limit = start.checked_sub(i64::from(HORIZON_YEARS).years()).ok()?;
        self.expression
            .cron
            .find_previous_occurrence(&start, true)
            .ok()
            .filter(|previous| previous.timestamp() >= limit.timestamp())
    }

    /// The slot a scheduler should take a backup for at `now`, if any.
    ///
    /// `since` is the last slot served (`status.lastScheduleTime`), or when
    /// scheduling began (the cluster's creation) when none was. Only the
    /// latest slot in `(since, now]` is returned, so a scheduler that was
    /// down for many slots takes one catch-up backup, never a storm.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Option<Zoned> {
        self.latest_at_or_before(now).filter(|slot| slot.timestamp() > since)
    }
}

/// Either half of a schedule was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleOrZoneError {
    #[error("schedule {0}")]
    Schedule(#[from] ScheduleError),
    #[error("time zone {0}")]
    Zone(#[from] UnknownTimeZone),
}
