//! What the data directory says: whether there is a database, which role it
//! runs in, where a replica streams from.
//!
//! The decisions ([`classify`], [`ControlData::parse`]) are pure; the small
//! file operations around them are here too so every path stead writes in
//! PGDATA is named in one place.
//!
//! Safety rules this module enforces:
//! - a directory with files but no `PG_VERSION` is [`DataDir::Foreign`]:
//!   never started, never bootstrapped over, never cleaned;
//! - the role is `standby.signal`: present means replica, absent means primary;
//! - a backup marker ([`BACKUP_MARKER`]) written by another pod means the
//!   data was restored from a snapshot ([`MarkerVerdict::Restored`]): it is
//!   not started until `POST /bootstrap {"mode":"restore"}` says so.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use stead_crds::instance_api::BackupMarker;

use crate::conf::Upstream;
use crate::lsn::Lsn;

/// Written by initdb and pg_basebackup; its presence means "a database is here".
pub const PG_VERSION: &str = "PG_VERSION";
/// Makes postgres start in standby mode (a streaming replica).
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// Where a replica streams from, as last decided by the controller.
pub const UPSTREAM_FILE: &str = "stead_upstream.json";
/// Written by postgres while it runs.
pub const POSTMASTER_PID: &str = "postmaster.pid";
/// Written by `POST /backup/start`, removed by the stop; carried by the snapshot.
pub const BACKUP_MARKER: &str = "stead-backup.json";
/// Targeted (archive) recovery; stead never writes it, a restore removes it.
pub const RECOVERY_SIGNAL: &str = "recovery.signal";
/// Written by an exclusive backup or a restore tool; a restore removes it (see `restore`).
pub const BACKUP_LABEL_FILE: &str = "backup_label";
/// Beside `backup_label` when there are tablespaces.
pub const TABLESPACE_MAP: &str = "tablespace_map";

/// The state of PGDATA as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// No directory: waits for `POST /bootstrap`.
    Missing,
    /// An empty directory: waits for `POST /bootstrap`.
    Empty,
    /// A database; `standby` when `standby.signal` is present.
    Initialized { standby: bool },
    /// Files, but no `PG_VERSION`: not stead's to touch. Holds a few names.
    Foreign { sample: Vec<String> },
}

/// The role the data says postgres runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRole {
    Primary,
    Replica,
}

impl DataDir {
    /// `true` when there is nothing yet, so a bootstrap may create it.
    pub fn is_empty(&self) -> bool {
        matches!(self, DataDir::Missing | DataDir::Empty)
    }

    /// The role a database here starts in; `None` without a database.
    pub fn role(&self) -> Option<DataRole> {
        match self {
            DataDir::Initialized { standby: true } => Some(DataRole::Replica),
            DataDir::Initialized { standby: false } => Some(DataRole::Primary),
            DataDir::Missing | DataDir::Empty | DataDir::Foreign { .. } => None,
        }
    }
}

/// Classifies a directory listing; `None` means the directory does not exist.
pub fn classify<S: AsRef<str>>(entries: Option<&[S]>) -> DataDir {
    let Some(entries) = entries else { return DataDir::Missing };
    if entries.is_empty() {
        return DataDir::Empty;
    }
    let has = |name: &str| entries.iter().any(|entry| entry.as_ref() == name);
    if has(PG_VERSION) {
        DataDir::Initialized { standby: has(STANDBY_SIGNAL) }
    } else {
        let mut sample: Vec<String> = entries.iter().map(|e| e.as_ref().to_owned()).collect();
        sample.sort();
        sample.truncate(5);
        DataDir::Foreign { sample }
    }
}

/// Reads PGDATA and classifies it.
pub fn inspect(pgdata: &Path) -> io::Result<DataDir> {
    let entries = match fs::read_dir(pgdata) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(classify::<String>(None)),
        Err(err) => return Err(err),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(classify(Some(&names)))
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader sees the old or the new file, never half of one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".stead-tmp");
    path.with_file_name(name)
}

/// Creates `standby.signal` (empty, like `pg_basebackup -R` does).
pub fn write_standby_signal(pgdata: &Path) -> io::Result<()> {
    write_atomic(&pgdata.join(STANDBY_SIGNAL), b"", 0o600)
}

/// Records where this replica streams from.
pub fn write_upstream(pgdata: &Path, upstream: &Upstream) -> io::Result<()> {
    let json = serde_json::to_vec(upstream).map_err(io::Error::other)?;
    write_atomic(&pgdata.join(UPSTREAM_FILE), &json, 0o600)
}

/// Forgets the upstream (after a promotion).
pub fn remove_upstream(pgdata: &Path) -> io::Result<()> {
    match fs::remove_file(pgdata.join(UPSTREAM_FILE)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The recorded upstream; `Ok(None)` when none is recorded. A file that
/// does not parse is reported, so the caller can fall back and say why.
pub fn read_upstream(pgdata: &Path) -> Result<Option<Upstream>, String> {
    let path = pgdata.join(UPSTREAM_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| format!("{} is not {{\"host\":…,\"port\":…}}: {err}", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot read {}: {err}", path.display())),
    }
}

/// Removes `name` from `pgdata`; a file that is not there is fine.
pub fn remove_if_present(pgdata: &Path, name: &str) -> io::Result<bool> {
    match fs::remove_file(pgdata.join(name)) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Writes the backup marker (mode 0600, atomically).
pub fn write_marker(pgdata: &Path, marker: &BackupMarker) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(marker).map_err(io::Error::other)?;
    write_atomic(&pgdata.join(BACKUP_MARKER), &json, 0o600)
}

/// The backup marker; `Ok(None)` when there is none. A file that does not
/// parse is reported with its path.
pub fn read_marker(pgdata: &Path) -> Result<Option<BackupMarker>, String> {
    let path = pgdata.join(BACKUP_MARKER);
    match fs::read(&path) {
        Ok(bytes) => parse_marker(&bytes).map(Some).map_err(|reason| format!("{}: {reason}", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot read {}: {err}", path.display())),
    }
}

/// Parses the marker's JSON (pure); unknown fields are ignored, so a newer
/// manager's marker still restores with this one.
pub fn parse_marker(bytes: &[u8]) -> Result<BackupMarker, String> {
    serde_json::from_slice(bytes).map_err(|err| {
        format!(
            "not a stead backup marker ({err}); expected JSON with label, mode (cold or hot), namespace, pod, \
             systemIdentifier, beginLsn and createdAt"
        )
    })
}

/// What a backup marker found in PGDATA means for this pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerVerdict {
    /// No marker: the data starts as it is.
    Absent,
    /// Written by this very pod: a backup runs, or one was interrupted (a
    /// stale marker, removed at startup).
    Ours(BackupMarker),
    /// Written by another pod: the data was restored from its snapshot and
    /// waits for `POST /bootstrap {"mode":"restore"}`.
    Restored(BackupMarker),
    /// A marker that cannot be read: nothing is started until someone looks.
    Unreadable(String),
}

impl MarkerVerdict {
    /// The restored backup's marker, if the data is restored data.
    pub fn restored(&self) -> Option<&BackupMarker> {
        match self {
            MarkerVerdict::Restored(marker) => Some(marker),
            _ => None,
        }
    }
}

/// Decides whose a marker is (pure): the identity is the pod's namespace and name.
pub fn judge_marker(found: Result<Option<BackupMarker>, String>, namespace: &str, pod: &str) -> MarkerVerdict {
    match found {
        Ok(None) => MarkerVerdict::Absent,
        Ok(Some(marker)) if marker.written_by(namespace, pod) => MarkerVerdict::Ours(marker),
        Ok(Some(marker)) => MarkerVerdict::Restored(marker),
        Err(reason) => MarkerVerdict::Unreadable(reason),
    }
}

/// What `pg_controldata` says about a data directory (the fields stead reports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlData {
    pub system_identifier: Option<String>,
    /// Timeline of the latest checkpoint.
    pub timeline: Option<u32>,
    /// `Database cluster state`, e.g. `in production`, `shut down`.
    pub state: Option<String>,
    /// `Latest checkpoint location`.
    pub checkpoint_lsn: Option<Lsn>,
    /// `Minimum recovery ending location` (0/0 outside recovery).
    pub min_recovery_lsn: Option<Lsn>,
}

/// The state pg_controldata reports for a standby shut down cleanly.
pub const SHUT_DOWN_IN_RECOVERY: &str = "shut down in recovery";

impl ControlData {
    /// Parses `pg_controldata` output (run with `LC_ALL=C`, so labels are English).
    pub fn parse(output: &str) -> ControlData {
        let mut data = ControlData::default();
        for line in output.lines() {
            let Some((label, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match label.trim() {
                "Database system identifier" => data.system_identifier = Some(value.to_owned()),
                "Latest checkpoint's TimeLineID" => data.timeline = value.parse().ok(),
                "Database cluster state" => data.state = Some(value.to_owned()),
                "Latest checkpoint location" => data.checkpoint_lsn = value.parse().ok(),
                "Minimum recovery ending location" => data.min_recovery_lsn = value.parse().ok(),
                _ => {}
            }
        }
        data
    }

    /// The WAL position a stopped data directory is consistent at: the
    /// minimum recovery point (every page on disk is covered by WAL up to
    /// it; replay pushes it forward as it flushes pages) or the latest
    /// checkpoint, whichever is later. `None` when neither was reported.
    pub fn consistent_at(&self) -> Option<Lsn> {
        match (self.min_recovery_lsn, self.checkpoint_lsn) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The `major` of every `/usr/lib/postgresql/<major>` entry, highest first.
pub fn versions_highest_first<S: AsRef<str>>(entries: &[S]) -> Vec<u32> {
    let mut versions: Vec<u32> = entries.iter().filter_map(|e| e.as_ref().parse().ok()).collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn classify_table() {
        let rows: Vec<(Option<Vec<&str>>, DataDir)> = vec![
            (None, DataDir::Missing),
            (Some(vec![]), DataDir::Empty),
            (Some(vec!["PG_VERSION", "base", "global"]), DataDir::Initialized { standby: false }),
            (Some(vec!["PG_VERSION", "standby.signal"]), DataDir::Initialized { standby: true }),
            (
                Some(vec!["lost+found", "backup_label"]),
                DataDir::Foreign { sample: vec!["backup_label".to_owned(), "lost+found".to_owned()] },
            ),
            (Some(vec!["standby.signal"]), DataDir::Foreign { sample: vec!["standby.signal".to_owned()] }),
        ];
        for (entries, expected) in rows {
            assert_eq!(classify(entries.as_deref()), expected, "{entries:?}");
        }
    }

    #[test]
    fn roles_come_from_standby_signal() {
        assert_eq!(DataDir::Initialized { standby: true }.role(), Some(DataRole::Replica));
        assert_eq!(DataDir::Initialized { standby: false }.role(), Some(DataRole::Primary));
        assert_eq!(DataDir::Empty.role(), None);
        assert_eq!(DataDir::Foreign { sample: vec![] }.role(), None);
        assert!(DataDir::Missing.is_empty() && DataDir::Empty.is_empty());
        assert!(!DataDir::Foreign { sample: vec![] }.is_empty());
    }

    #[test]
    fn controldata_fields() {
        let output = "pg_control version number:            1300\n\
                      Catalog version number:               202209061\n\
                      Database system identifier:           7393517237520473112\n\
                      Database cluster state:               shut down in recovery\n\
                      Latest checkpoint's TimeLineID:       3\n\
                      Latest checkpoint's PrevTimeLineID:   2\n";
        let data = ControlData::parse(output);
        assert_eq!(data.system_identifier.as_deref(), Some("7393517237520473112"));
        assert_eq!(data.timeline, Some(3));
        assert_eq!(data.state.as_deref(), Some("shut down in recovery"));
        assert_eq!(ControlData::parse(""), ControlData::default());
        assert_eq!(ControlData::parse("").consistent_at(), None);
    }

    #[test]
    fn a_stopped_standby_is_consistent_at_its_minimum_recovery_point() {
        let standby = "Latest checkpoint location:           0/5000060\n\
                       Latest checkpoint's REDO location:    0/5000028\n\
                       Minimum recovery ending location:     0/6000110\n";
        let data = ControlData::parse(standby);
        assert_eq!(data.checkpoint_lsn, Some(Lsn(0x0500_0060)));
        assert_eq!(data.min_recovery_lsn, Some(Lsn(0x0600_0110)));
        assert_eq!(data.consistent_at(), Some(Lsn(0x0600_0110)));
        // A primary shut down cleanly: no minimum recovery point, the checkpoint is it.
        let primary = "Latest checkpoint location:           0/5000060\n\
                       Minimum recovery ending location:     0/0\n";
        assert_eq!(ControlData::parse(primary).consistent_at(), Some(Lsn(0x0500_0060)));
    }

    fn marker(namespace: &str, pod: &str) -> BackupMarker {
        BackupMarker {
            label: "orders-202501010200".to_owned(),
            mode: stead_crds::instance_api::BackupMode::Cold,
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            system_identifier: "7393517237520473112".to_owned(),
            begin_lsn: Lsn(0x0600_0110),
            created_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2025-01-01T02:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn whose_marker_table() {
        let rows: Vec<(Result<Option<BackupMarker>, String>, MarkerVerdict)> = vec![
            (Ok(None), MarkerVerdict::Absent),
            (Ok(Some(marker("shop", "orders-1"))), MarkerVerdict::Ours(marker("shop", "orders-1"))),
            (Ok(Some(marker("shop", "orders-2"))), MarkerVerdict::Restored(marker("shop", "orders-2"))),
            (Ok(Some(marker("test", "orders-1"))), MarkerVerdict::Restored(marker("test", "orders-1"))),
            (Err("bad".to_owned()), MarkerVerdict::Unreadable("bad".to_owned())),
        ];
        for (found, expected) in rows {
            let verdict = judge_marker(found, "shop", "orders-1");
            assert_eq!(verdict, expected);
            assert_eq!(verdict.restored().is_some(), matches!(expected, MarkerVerdict::Restored(_)));
        }
    }

    #[test]
    fn markers_are_written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path();
        assert_eq!(read_marker(pgdata), Ok(None));
        write_marker(pgdata, &marker("shop", "orders-1")).unwrap();
        let mode = fs::metadata(pgdata.join(BACKUP_MARKER)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_marker(pgdata), Ok(Some(marker("shop", "orders-1"))));
        assert!(remove_if_present(pgdata, BACKUP_MARKER).unwrap());
        assert!(!remove_if_present(pgdata, BACKUP_MARKER).unwrap());
        fs::write(pgdata.join(BACKUP_MARKER), "{\"label\":\"x\"}").unwrap();
        let err = read_marker(pgdata).unwrap_err();
        assert!(err.contains(BACKUP_MARKER) && err.contains("expected JSON with label"), "{err}");
    }

    #[test]
    fn versions_sort_numerically() {
        assert_eq!(versions_highest_first(&["9", "15", "17", "common", "16"]), [17, 16, 15, 9]);
        assert!(versions_highest_first::<&str>(&[]).is_empty());
    }

    #[test]
    fn files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path();
        assert_eq!(read_upstream(pgdata), Ok(None));
        let upstream = Upstream { host: "orders-rw".to_owned(), port: 5432 };
        write_upstream(pgdata, &upstream).unwrap();
        assert_eq!(read_upstream(pgdata), Ok(Some(upstream)));
        remove_upstream(pgdata).unwrap();
        remove_upstream(pgdata).unwrap();
        assert_eq!(read_upstream(pgdata), Ok(None));
        fs::write(pgdata.join(UPSTREAM_FILE), "nope").unwrap();
        assert!(read_upstream(pgdata).unwrap_err().contains("is not"));

        fs::write(pgdata.join(PG_VERSION), "15\n").unwrap();
        write_standby_signal(pgdata).unwrap();
        let mode = fs::metadata(pgdata.join(STANDBY_SIGNAL)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(inspect(pgdata).unwrap(), DataDir::Initialized { standby: true });
        assert_eq!(inspect(&pgdata.join("absent")).unwrap(), DataDir::Missing);
    }
}
