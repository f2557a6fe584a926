//! The instance manager's HTTPS API, as both sides speak it.
//!
//! stead-instance serves these bodies and stead-controller reads and sends
//! them; one definition keeps the two from drifting apart.
//!
//! WAL positions (`pg_lsn`) are written as PostgreSQL prints them: `X/Y`,
//! two hex halves of a 64-bit byte offset into the WAL stream. The
//! controller compares positions across instances (who is furthest ahead,
//! how far a replica lags), so the arithmetic is plain `u64` byte distance.

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a WAL position: expected two hexadecimal numbers of at most 8 digits separated by '/', such as 0/3000060"
)]
pub struct LsnParseError {
    /// The text that was given.
    pub input: String,
}

impl Lsn {
    /// Bytes from `earlier` to `self`; zero when `earlier` is not earlier.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || LsnParseError { input: input.to_owned() };
        let (high, low) = input.split_once('/').ok_or_else(error)?;
        let half = |part: &str| {
            let well_formed = (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
            if well_formed { u32::from_str_radix(part, 16).ok() } else { None }
        };
        let (high, low) = (half(high).ok_or_else(error)?, half(low).ok_or_else(error)?);
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PostgreSQL prints both halves in upper-case hex without padding.
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What an instance is, as `GET /status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// Streams from (or tries to reach) a primary.
    Replica,
    /// Has no data yet and waits for `POST /bootstrap`, or is being bootstrapped.
    Bootstrapping,
    /// Stopped on purpose, or holds something that is not a database.
    Stopped,
}

impl Role {
    /// The value as it appears in JSON and in the pod label `stead.dev/role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Bootstrapping => "bootstrapping",
            Self::Stopped => "stopped",
        }
    }
}

/// The state of the postmaster the instance manager supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Postmaster {
    /// Alive and answering queries.
    Running,
    /// Alive but not accepting connections yet (crash recovery), or about to be restarted.
    Starting,
    /// Stopped on purpose.
    Stopped,
    /// Exited too often; not restarted any more.
    Crashed,
}

/// The body of `GET /status`, and of every successful operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub pod_name: String,
    pub role: Role,
    pub postmaster: Postmaster,
    /// What `/readyz` answers.
    pub ready: bool,
    pub timeline: Option<u32>,
    pub system_identifier: Option<String>,
    /// A primary's `pg_current_wal_lsn()`; a replica's replay position.
    pub current_lsn: Option<Lsn>,
    /// A replica's `pg_last_wal_receive_lsn()`.
    pub received_lsn: Option<Lsn>,
    /// A replica's `pg_last_wal_replay_lsn()`.
    pub replayed_lsn: Option<Lsn>,
    /// WAL the primary has that this replica has not replayed, as far as the replica knows.
    pub lag_bytes: Option<u64>,
    /// The WAL receiver's status is `streaming`.
    pub streaming: bool,
    /// The host a replica streams from.
    pub primary_host: Option<String>,
    /// Times the postmaster was restarted after a crash.
    pub restarts: u32,
    /// A changed parameter waits for a restart.
    pub pending_restart: bool,
}

/// The body of `POST /bootstrap`: how a new instance gets its data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Bootstrap {
    /// A new database: this instance becomes the primary.
    Initdb,
    /// A copy of the primary's: this instance becomes its replica.
    #[serde(rename_all = "camelCase")]
    Clone {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        primary_host: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        primary_port: Option<u16>,
    },
}

impl Bootstrap {
    /// `initdb` or `clone`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Initdb => "initdb",
            Self::Clone { .. } => "clone",
        }
    }
}

/// The body of `POST /demote`: where to stream from afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Demote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_port: Option<u16>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    pub message: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn parse_table() {
        let rows: &[(&str, Option<u64>)] = &[
            ("0/0", Some(0)),
            ("0/3000060", Some(0x0300_0060)),
            ("16/B374D848", Some((0x16 << 32) | 0xB374_D848)),
            ("ffffffff/FFFFFFFF", Some(u64::MAX)),
            ("0/1", Some(1)),
            ("", None),
            ("0", None),
            ("/0", None),
            ("0/", None),
            ("0/0/0", None),
            ("g/0", None),
            ("100000000/0", None),
            (" 0/0", None),
            ("0/+1", None),
            ("-1/0", None),
        ];
        for (text, expected) in rows {
            assert_eq!(text.parse::<Lsn>().ok().map(|lsn| lsn.0), *expected, "{text:?}");
        }
    }

    #[test]
    fn display_matches_postgres() {
        for text in ["0/0", "0/3000060", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert_eq!("0/003000060".parse::<Lsn>().ok(), None, "more than 8 digits");
        assert_eq!("a/b".parse::<Lsn>().unwrap().to_string(), "A/B");
    }

    #[test]
    fn distance_saturates() {
        let a: Lsn = "0/3000060".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(b.bytes_after(a), 0x1_0000_0000 - 0x0300_0060);
        assert_eq!(a.bytes_after(b), 0);
        assert_eq!(a.bytes_after(a), 0);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let lsn: Lsn = "0/3000060".parse().unwrap();
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"0/3000060\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"0/3000060\"").unwrap(), lsn);
        let err = serde_json::from_str::<Lsn>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("not a WAL position"), "{err}");
    }
}
