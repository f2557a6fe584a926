//! The backup schedule grammar, proved against croner: what is accepted and
//! refused, croner's fire times against a brute-force matcher of the grammar,
//! daylight saving time in Europe/Berlin, and the due-time computation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use stead_crds::schedule::{Expression, Schedule, ScheduleError, time_zone};

fn utc(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn schedule(text: &str, zone: &str) -> Schedule {
    Schedule::parse(text, Some(zone)).unwrap_or_else(|e| panic!("{text:?} in {zone}: {e}"))
}

/// The first `n` fires after `from`, as RFC 3339 with the zone's offset.
fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut at = utc(from);
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(next) = s.next_after(at) else { break };
        out.push(next.strftime("%Y-%m-%dT%H:%M%:z").to_string());
        at = next.timestamp();
    }
    out
}

#[test]
fn accepted_schedules_fire_when_the_grammar_says() {
    // (schedule, after (UTC), first fires in UTC)
    let rows: &[(&str, &str, &[&str])] = &[
        ("0 3 * * *", "2025-01-01T00:00:00Z", &["2025-01-01T03:00+00:00", "2025-01-02T03:00+00:00"]),
        ("*/15 * * * *", "2025-01-01T00:07:00Z", &["2025-01-01T00:15+00:00", "2025-01-01T00:30+00:00"]),
        ("5-20/5 1 * * *", "2025-01-01T00:00:00Z", &["2025-01-01T01:05+00:00", "2025-01-01T01:10+00:00"]),
        ("0 9,17 * * *", "2025-01-01T10:00:00Z", &["2025-01-01T17:00+00:00", "2025-01-02T09:00+00:00"]),
        // 2025-01-01 is a Wednesday.
        ("30 1 * * MON", "2025-01-01T00:00:00Z", &["2025-01-06T01:30+00:00", "2025-01-13T01:30+00:00"]),
        ("0 0 * * mon-fri", "2025-01-03T12:00:00Z", &["2025-01-06T00:00+00:00", "2025-01-07T00:00+00:00"]),
        ("0 0 1 JAN *", "2025-06-01T00:00:00Z", &["2026-01-01T00:00+00:00"]),
        ("0 0 1 jul-aug *", "2025-01-01T00:00:00Z", &["2025-07-01T00:00+00:00", "2025-08-01T00:00+00:00"]),
        // 0 and 7 are both Sunday; MON-SUN is every day.
        ("0 0 * * 7", "2025-01-01T00:00:00Z", &["2025-01-05T00:00+00:00"]),
        ("0 0 * * 0", "2025-01-01T00:00:00Z", &["2025-01-05T00:00+00:00"]),
        ("0 0 * * MON-SUN", "2025-01-01T00:00:00Z", &["2025-01-02T00:00+00:00"]),
        // Vixie cron: both day fields restricted means either (the 15th, or a Monday).
        ("0 0 15 * MON", "2025-01-07T00:00:00Z", &["2025-01-13T00:00+00:00", "2025-01-15T00:00+00:00"]),
        // ... and one that starts with '*' means both: odd days that are Mondays (croner alone says either).
        ("0 0 */2 * MON", "2025-01-01T00:00:00Z", &["2025-01-13T00:00+00:00", "2025-01-27T00:00+00:00"]),
        // Sundays, Wednesdays and Saturdays that are the 1st: 2025-02-01 is a Saturday, 2025-03-01 too.
        ("0 0 1 * */3", "2025-01-01T00:00:00Z", &["2025-02-01T00:00+00:00", "2025-03-01T00:00+00:00"]),
        // February 30th never exists, but ORed with Monday it fires on Mondays of February.
        ("0 0 30 2 MON", "2025-01-01T00:00:00Z", &["2025-02-03T00:00+00:00"]),
        ("0 0 29 2 *", "2025-01-01T00:00:00Z", &["2028-02-29T00:00+00:00"]),
        ("@hourly", "2025-01-01T00:30:00Z", &["2025-01-01T01:00+00:00"]),
        ("@daily", "2025-01-01T00:30:00Z", &["2025-01-02T00:00+00:00"]),
        ("@midnight", "2025-01-01T00:30:00Z", &["2025-01-02T00:00+00:00"]),
        ("@weekly", "2025-01-01T00:00:00Z", &["2025-01-05T00:00+00:00"]),
        ("@monthly", "2025-01-01T00:00:00Z", &["2025-02-01T00:00+00:00"]),
        ("@YEARLY", "2025-01-01T00:00:00Z", &["2026-01-01T00:00+00:00"]),
        ("@annually", "2025-01-01T00:00:00Z", &["2026-01-01T00:00+00:00"]),
        ("  0   3  *  *  *  ", "2025-01-01T00:00:00Z", &["2025-01-01T03:00+00:00"]),
    ];
    for (text, after, want) in rows {
        let s = schedule(text, "UTC");
        assert_eq!(fires(&s, after, want.len()), *want, "{text:?}");
    }
}

#[test]
fn refused_schedules_say_why() {
    let count = |count| ScheduleError::FieldCount { count };
    let rows: Vec<(&str, ScheduleError)> = vec![
        // Six fields: the CloudNativePG bug was to read these as seconds first.
        ("0 0 3 * * *", count(6)),
        ("0 3 * * * 2025", count(6)),
        ("0 0 3 * * * 2025", count(7)),
        ("0 3 * *", count(4)),
        ("", count(0)),
        ("@every 5m", count(2)),
        ("@reboot", ScheduleError::UnknownMacro { name: "@reboot".into() }),
        ("0 0 31 2 *", ScheduleError::NeverFires),
        ("0 0 30 2 *", ScheduleError::NeverFires),
        ("0 0 31 4,6,9,11 *", ScheduleError::NeverFires),
        ("0 0 30-31 FEB *", ScheduleError::NeverFires),
        ("0 0 31 2 */2", ScheduleError::NeverFires),
    ];
    for (text, want) in rows {
        assert_eq!(Expression::parse(text).unwrap_err(), want, "{text:?}");
    }
    // Field errors name the field and the value.
    let fields: &[(&str, &str, &str)] = &[
        ("60 * * * *", "minute", "outside 0-59"),
        ("* 24 * * *", "hour", "outside 0-23"),
        ("* * 0 * *", "day-of-month", "outside 1-31"),
        ("* * 32 * *", "day-of-month", "outside 1-31"),
        ("* * * 13 *", "month", "outside 1-12"),
        ("* * * * 8", "day-of-week", "outside 0-7"),
        ("* * * FOO *", "month", "the names JAN"),
        ("* * * * FOO", "day-of-week", "the names SUN"),
        ("* * * * MON#2", "day-of-week", "an extension"),
        ("* * L * *", "day-of-month", "an extension"),
        ("* * 15W * *", "day-of-month", "an extension"),
        ("* * ? * *", "day-of-month", "an extension"),
        ("* * * * 5L", "day-of-week", "an extension"),
        ("* * 1 * +MON", "day-of-week", "an extension"),
        ("5/15 * * * *", "minute", "a step follows * or a range"),
        ("*/0 * * * *", "minute", "a step is a number"),
        ("*/x * * * *", "minute", "a step is a number"),
        ("30-10 * * * *", "minute", "runs backwards"),
        ("1,,2 * * * *", "minute", "the values are numbers"),
        ("-5 * * * *", "minute", "the values are numbers"),
        ("MON * * * *", "minute", "the values are numbers"),
    ];
    for (text, field, says) in fields {
        match Expression::parse(text) {
            Err(err @ ScheduleError::Field { field: f, .. }) => {
                assert_eq!(f, *field, "{text:?}");
                assert!(err.to_string().contains(says), "{text:?}: {err}");
                assert!(err.to_string().contains("\"0 3 * * *\""), "every refusal shows an example: {err}");
            }
            other => panic!("{text:?}: want a {field} field error, got {other:?}"),
        }
    }
    let message = Expression::parse("0 0 3 * * *").unwrap_err().to_string();
    assert!(message.contains("exactly 5 fields") && message.contains("no seconds"), "{message}");
}

/// Every fire of croner must be a minute the grammar matches, and no matching minute may be skipped.
#[test]
fn croner_agrees_with_a_brute_force_matcher_of_the_grammar() {
    let patterns = [
        "* * * * *",
        "*/7 * * * *",
        "0 */5 * * *",
        "15,45 8-18/2 * * *",
        "0 0 */2 * MON",
        "0 12 1-7 * SUN",
        "0 12 */10 * */2",
        "30 6 * * 1-5",
        "0 0 1,15 * 6,7",
        "59 23 31 * *",
        "0 0 * JAN,MAR-MAY/2 *",
        "0 4 8-14 * MON",
        "0 0 * * 5-7",
    ];
    let start: DateTime = "2025-01-01T00:00".parse().unwrap();
    let minutes = 45 * 24 * 60;
    for text in patterns {
        let expression = Expression::parse(text).unwrap();
        let mut brute = Vec::new();
        let mut at = start;
        for _ in 0..minutes {
            if expression.matches(at) {
                brute.push(at);
                if brute.len() == 300 {
                    break;
                }
            }
            at = at.checked_add(1.minute()).unwrap();
        }
        let s = Schedule::new(expression, TimeZone::UTC);
        let mut croner = Vec::new();
        let mut from = start.to_zoned(TimeZone::UTC).unwrap().timestamp().checked_sub(1.second()).unwrap();
        while croner.len() < brute.len() {
            let next = s.next_after(from).unwrap();
            croner.push(next.datetime());
            from = next.timestamp();
        }
        assert!(!brute.is_empty(), "{text:?} never matched in 45 days");
        assert_eq!(croner, brute, "{text:?}");
    }
}

/// Europe/Berlin: clocks jump 02:00 -> 03:00 on 2025-03-30 and go back 03:00 -> 02:00 on 2025-10-26.
#[test]
fn daylight_saving_time_in_europe_berlin() {
    // A fixed time in the gap fires once, at the first instant after it; the next day is normal.
    let daily = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(fires(&daily, "2025-03-29T12:00:00Z", 2), ["2025-03-30T03:00+02:00", "2025-03-31T02:30+02:00"]);
    // A fixed time in the overlap fires once, at its first occurrence (summer time).
    assert_eq!(fires(&daily, "2025-10-25T12:00:00Z", 2), ["2025-10-26T02:30+02:00", "2025-10-27T02:30+01:00"]);
    // A stepped minute in the gap hour is skipped that night ...
    let stepped = schedule("*/20 2 * * *", "Europe/Berlin");
    assert_eq!(fires(&stepped, "2025-03-29T12:00:00Z", 1), ["2025-03-31T02:00+02:00"]);
    // ... and fires in both passes of the overlap hour.
    assert_eq!(
        fires(&stepped, "2025-10-25T12:00:00Z", 6),
        [
            "2025-10-26T02:00+02:00",
            "2025-10-26T02:20+02:00",
            "2025-10-26T02:40+02:00",
            "2025-10-26T02:00+01:00",
            "2025-10-26T02:20+01:00",
            "2025-10-26T02:40+01:00"
        ]
    );
    // The same schedule in UTC knows no DST.
    let in_utc = schedule("30 2 * * *", "UTC");
    assert_eq!(fires(&in_utc, "2025-03-29T12:00:00Z", 2), ["2025-03-30T02:30+00:00", "2025-03-31T02:30+00:00"]);
}

#[test]
fn due_slots_come_from_the_last_schedule_time_and_catch_up_once() {
    let hourly = schedule("0 * * * *", "UTC");
    let due = |since: &str, now: &str| hourly.due(utc(since), utc(now)).map(|z| z.timestamp().to_string());
    // Nothing new since the last slot.
    assert_eq!(due("2025-01-01T10:00:00Z", "2025-01-01T10:59:59Z"), None);
    // The slot itself is due at its minute.
    assert_eq!(due("2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z").as_deref(), Some("2025-01-01T11:00:00Z"));
    // After five missed slots (downtime), only the latest is due: one catch-up, never a storm.
    assert_eq!(due("2025-01-01T10:00:00Z", "2025-01-01T15:30:00Z").as_deref(), Some("2025-01-01T15:00:00Z"));
    // After a month of downtime, still one.
    assert_eq!(due("2025-01-01T10:00:00Z", "2025-02-01T10:30:00Z").as_deref(), Some("2025-02-01T10:00:00Z"));

    // Daily at 02:30 in Berlin across the spring gap: the slot is 03:00 CEST (01:00Z) that night.
    let berlin = schedule("30 2 * * *", "Europe/Berlin");
    let due = |since: &str, now: &str| berlin.due(utc(since), utc(now)).map(|z| z.timestamp().to_string());
    assert_eq!(due("2025-03-29T01:30:00Z", "2025-03-30T00:59:00Z"), None);
    assert_eq!(due("2025-03-29T01:30:00Z", "2025-03-30T01:00:00Z").as_deref(), Some("2025-03-30T01:00:00Z"));
    // Across the autumn overlap it is due once, at 02:30 CEST (00:30Z), not again an hour later.
    assert_eq!(due("2025-10-25T00:30:00Z", "2025-10-26T00:30:00Z").as_deref(), Some("2025-10-26T00:30:00Z"));
    assert_eq!(due("2025-10-26T00:30:00Z", "2025-10-26T01:45:00Z"), None);
}

#[test]
fn the_shortest_interval_is_measured_in_wall_clock_minutes() {
    let rows: &[(&str, Option<u64>)] = &[
        ("* * * * *", Some(1)),
        ("*/5 * * * *", Some(5)),
        ("*/15 * * * *", Some(15)),
        ("0,10 * * * *", Some(10)),
        // 00:50 to 01:05.
        ("5,50 * * * *", Some(15)),
        ("55 * * * *", Some(60)),
        ("0,30 3 * * *", Some(30)),
        // 03:55 to 04:05 on consecutive hours.
        ("5,55 3,4 * * *", Some(10)),
        // 23:55 to 00:05 the next day.
        ("5,55 0,23 * * *", Some(10)),
        ("0 */2 * * *", Some(120)),
        ("0 3 * * *", None),
        ("@daily", None),
    ];
    for (text, minutes) in rows {
        let got = Expression::parse(text).unwrap().min_interval();
        assert_eq!(got, minutes.map(|m| Duration::from_secs(m * 60)), "{text:?}");
    }
}

#[test]
fn time_zones_come_from_the_bundled_iana_database() {
    for name in ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Etc/GMT+5"] {
        assert!(time_zone(name).is_ok(), "{name}");
    }
    for name in ["", "Mars/Olympus_Mons", "Europe/Berln", "/etc/localtime", "../../etc/passwd", ":UTC", "UTC+1"] {
        let err = time_zone(name).unwrap_err().to_string();
        assert!(err.contains("Europe/Berlin"), "{name}: {err}");
    }
    let long = "A".repeat(65);
    assert!(time_zone(&long).is_err());
}

#[test]
fn far_searches_are_bounded() {
    // February 29th fires every four years; from 2097 the next is 2104 (2100 is not a leap year).
    let leap = schedule("0 0 29 2 *", "UTC");
    assert_eq!(fires(&leap, "2097-01-01T00:00:00Z", 1), ["2104-02-29T00:00+00:00"]);
    assert!(leap.latest_at_or_before(utc("2025-01-01T00:00:00Z")).is_some());
}
