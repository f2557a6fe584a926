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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
    /// The backup running on this instance (`POST /backup/start` answered,
    /// `POST /backup/stop` not yet). Absent when none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupInProgress>,
    /// PGDATA was restored from a backup of another instance (its marker
    /// file names another pod): postgres is not started, `role` is
    /// `bootstrapping`, and only `POST /bootstrap {"mode":"restore"}` starts
    /// it, as the new primary. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restorable: Option<BackupMarker>,
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
    /// PGDATA holds data restored from a backup (`restorable` in the
    /// status): start it as the new primary, with this cluster's settings
    /// and passwords.
    Restore,
}

impl Bootstrap {
    /// `initdb`, `clone` or `restore`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Initdb => "initdb",
            Self::Clone { .. } => "clone",
            Self::Restore => "restore",
        }
    }
}

/// How `POST /backup/start` makes the data directory consistent for a
/// volume snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// A streaming replica only: CHECKPOINT (a restartpoint), then a clean
    /// fast shutdown; postgres stays stopped ("fenced") until the stop.
    Cold,
    /// `pg_backup_start` on a session held until the stop; postgres keeps serving.
    Hot,
}

impl BackupMode {
    /// `cold` or `hot`, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Hot => "hot",
        }
    }
}

impl fmt::Display for BackupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of `POST /backup/start`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupStart {
    pub mode: BackupMode,
    /// Names the backup (the DatabaseBackup's name); 1 to 253 printable
    /// characters, no line breaks.
    pub label: String,
}

/// The answer of `POST /backup/start`: the data directory may be snapshotted now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStarted {
    pub mode: BackupMode,
    pub label: String,
    /// Hot: what `pg_backup_start` returned. Cold: the WAL position the
    /// stopped data directory is consistent at (pg_controldata's `Minimum
    /// recovery ending location`, or `Latest checkpoint location` when later).
    pub begin_lsn: Lsn,
}

/// The body of `POST /backup/stop`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupStop {
    pub label: String,
}

/// The answer of `POST /backup/stop`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStopped {
    pub label: String,
    /// Hot: the `lsn` of `pg_backup_stop`. Cold: the begin LSN (nothing moved while fenced).
    pub end_lsn: Lsn,
    /// Hot: the `labelfile` of `pg_backup_stop` (keep it with the snapshot;
    /// it is needed only to recover with a WAL archive). Cold: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_label: Option<String>,
}

/// A backup running on an instance, as `GET /status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupInProgress {
    pub mode: BackupMode,
    pub label: String,
    /// When `POST /backup/start` began it.
    pub since: Time,
}

/// `stead-backup.json`: written into PGDATA by `POST /backup/start` (so the
/// volume snapshot carries it) and removed from the live data directory by
/// the stop. Found at startup with another pod's identity, it marks restored
/// data; with this pod's own, an interrupted backup (removed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupMarker {
    pub label: String,
    pub mode: BackupMode,
    /// Namespace and pod name of the instance the backup was taken on.
    pub namespace: String,
    pub pod: String,
    /// `pg_control_system().system_identifier` of the data.
    pub system_identifier: String,
    pub begin_lsn: Lsn,
    pub created_at: Time,
}

impl BackupMarker {
    /// Whether this marker was written by the instance `namespace`/`pod`.
    pub fn written_by(&self, namespace: &str, pod: &str) -> bool {
        self.namespace == namespace && self.pod == pod
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
    fn backup_bodies() {
        let start: BackupStart = serde_json::from_str(r#"{"mode":"cold","label":"orders-202501010200"}"#).unwrap();
        assert_eq!(start, BackupStart { mode: BackupMode::Cold, label: "orders-202501010200".into() });
        assert!(serde_json::from_str::<BackupStart>(r#"{"mode":"warm","label":"x"}"#).is_err());
        assert!(serde_json::from_str::<BackupStart>(r#"{"mode":"hot","label":"x","fast":true}"#).is_err());
        let stopped = BackupStopped { label: "b".into(), end_lsn: Lsn(0x0300_0060), backup_label: None };
        assert_eq!(serde_json::to_value(&stopped).unwrap(), serde_json::json!({"label":"b","endLsn":"0/3000060"}));
        let started = BackupStarted { mode: BackupMode::Hot, label: "b".into(), begin_lsn: Lsn(1) };
        assert_eq!(
            serde_json::to_value(&started).unwrap(),
            serde_json::json!({"mode":"hot","label":"b","beginLsn":"0/1"})
        );
        let bootstrap: Bootstrap = serde_json::from_str(r#"{"mode":"restore"}"#).unwrap();
        assert_eq!(
            (bootstrap.name(), serde_json::to_string(&bootstrap).unwrap()),
            ("restore", r#"{"mode":"restore"}"#.into())
        );
    }

    #[test]
    fn markers_round_trip_and_know_their_writer() {
        let json = r#"{"label":"orders-1","mode":"cold","namespace":"shop","pod":"orders-1",
            "systemIdentifier":"7393517237520473112","beginLsn":"0/5000028","createdAt":"2025-01-01T02:00:00Z",
            "addedLater":true}"#;
        let marker: BackupMarker = serde_json::from_str(json).unwrap();
        assert_eq!(marker.begin_lsn, Lsn(0x0500_0028));
        assert!(marker.written_by("shop", "orders-1"));
        assert!(!marker.written_by("shop", "orders-0"));
        assert!(!marker.written_by("other", "orders-1"));
        let back: BackupMarker = serde_json::from_value(serde_json::to_value(&marker).unwrap()).unwrap();
        assert_eq!(back, marker);
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
