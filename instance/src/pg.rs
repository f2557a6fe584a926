//! Queries to the local postgres, over the private unix socket as the
//! superuser (trusted there: the socket directory is mode 0700).
//!
//! Each call opens its own connection and closes it: a connection held open
//! would delay a smart shutdown until its timeout. Every call is bounded by
//! the query timeout, and the server's `statement_timeout` matches it.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tracing::debug;

use crate::error::Error;
use crate::lsn::Lsn;

/// One look at the server: what `/status` and `/readyz` are derived from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` on a primary.
    pub current_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` on a replica.
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` on a replica.
    pub replay_lsn: Option<Lsn>,
    /// `pg_stat_wal_receiver.status` (`streaming`, `catchup`, …), if a WAL receiver runs.
    pub receiver_status: Option<String>,
    /// `pg_stat_wal_receiver.latest_end_lsn`: the end of WAL the primary last reported.
    pub latest_end_lsn: Option<Lsn>,
    /// `pg_stat_wal_receiver.received_tli`.
    pub received_timeline: Option<u32>,
    /// The primary's timeline, from the name of its current WAL segment.
    pub current_timeline: Option<u32>,
    /// `pg_control_checkpoint().timeline_id`.
    pub checkpoint_timeline: Option<u32>,
    pub system_identifier: Option<String>,
    /// Settings changed in a file that need a restart to apply.
    pub pending_restart: bool,
}

/// Why a probe found no answering server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// It does not accept connections yet (starting, in crash recovery, or
    /// shutting down), or its socket is not there.
    NotAccepting(String),
    /// It answered with an error, or not in time.
    Failed(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::NotAccepting(reason) | ProbeError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// The probe query: one round trip, text columns, valid on primary and replica.
/// `CASE` keeps `pg_current_wal_lsn()` from running during recovery, where it
/// raises an error; recovery can only end between two evaluations, never begin.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
    pg_last_wal_receive_lsn()::text, \
    pg_last_wal_replay_lsn()::text, \
    (SELECT status FROM pg_stat_wal_receiver), \
    (SELECT latest_end_lsn::text FROM pg_stat_wal_receiver), \
    (SELECT received_tli::text FROM pg_stat_wal_receiver), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
    (SELECT timeline_id::text FROM pg_control_checkpoint()), \
    (SELECT system_identifier::text FROM pg_control_system()), \
    EXISTS (SELECT FROM pg_settings WHERE pending_restart)";

/// Connection settings for the local server.
#[derive(Debug, Clone)]
pub struct Db {
    socket_dir: PathBuf,
    port: u16,
    timeout: Duration,
}

impl Db {
    pub fn new(socket_dir: PathBuf, port: u16, timeout: Duration) -> Self {
        Self { socket_dir, port, timeout }
    }

    async fn connect(&self, user: &str, statement_timeout: Duration) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .dbname("postgres")
            .application_name("stead-instance")
            .connect_timeout(self.timeout)
            .options(format!("-c statement_timeout={}", statement_timeout.as_millis()));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, "local postgres connection ended with an error");
            }
        });
        Ok(client)
    }

    /// Looks at the server; the error tells whether it is merely not up yet.
    pub async fn probe(&self, user: &str) -> Result<Probe, ProbeError> {
        let attempt = async {
            let client = self.connect(user, self.timeout).await.map_err(|err| classify(&err))?;
            let messages = client.simple_query(PROBE_SQL).await.map_err(|err| classify(&err))?;
            let row = messages
                .iter()
                .find_map(|m| if let SimpleQueryMessage::Row(row) = m { Some(row) } else { None })
                .ok_or_else(|| ProbeError::Failed("the status query returned no row".to_owned()))?;
            let text = |i: usize| row.try_get(i).ok().flatten().map(str::to_owned);
            parse_probe(&(0..11).map(text).collect::<Vec<_>>())
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Failed(format!(
                "postgres did not answer the status query within {}s",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Runs `sql` (simple protocol, several statements allowed) within `limit`.
    /// A statement in `setup` runs (and is logged, if at all) before `sql` is sent.
    async fn execute(
        &self,
        user: &str,
        action: &'static str,
        setup: Option<&str>,
        sql: &str,
        limit: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, Error> {
        let attempt = async {
            let client = self.connect(user, limit).await?;
            if let Some(setup) = setup {
                client.simple_query(setup).await?;
            }
            client.simple_query(sql).await
        };
        match tokio::time::timeout(limit + self.timeout, attempt).await {
            Ok(Ok(messages)) => Ok(messages),
            Ok(Err(err)) => Err(Error::Postgres { action, reason: describe(&err) }),
            Err(_) => Err(Error::Timeout { what: action, after: limit + self.timeout }),
        }
    }

    /// Creates the replication role if it is missing and sets both passwords
    /// from the Secret. The passwords travel as SCRAM verifiers computed
    /// here, with statement logging off, so no log ever holds them.
    pub async fn ensure_roles(
        &self,
        superuser: &str,
        superuser_password: &str,
        replication_user: &str,
        replication_password: &str,
    ) -> Result<(), Error> {
        let su_verifier = postgres_protocol::password::scram_sha_256(superuser_password.as_bytes());
        let repl_verifier = postgres_protocol::password::scram_sha_256(replication_password.as_bytes());
        let sql = ensure_roles_sql(superuser, &su_verifier, replication_user, &repl_verifier);
        self.execute(superuser, "set the roles' passwords", Some(QUIET), &sql, self.timeout).await.map(drop)
    }

    /// `pg_promote(wait => true)`; `Ok(true)` once the promotion finished.
    pub async fn promote(&self, user: &str, wait: Duration) -> Result<bool, Error> {
        let seconds = wait.as_secs().clamp(1, i32::MAX as u64);
        let sql = format!("SELECT pg_promote(true, {seconds})");
        let messages = self.execute(user, "promote", None, &sql, wait + Duration::from_secs(5)).await?;
        Ok(messages.iter().any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))))
    }
}

/// The session of a hot backup: `pg_backup_start` ran on it, and the
/// backup lasts as long as the session (a non-exclusive backup ends with
/// the session that started it). Dropping it aborts the backup.
pub struct BackupSession {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for BackupSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSession").field("closed", &self.client.is_closed()).finish_non_exhaustive()
    }
}

/// What `pg_backup_stop` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEnd {
    pub lsn: Lsn,
    /// The `backup_label` file's text.
    pub label_file: String,
}

impl Db {
    /// Opens a dedicated session and runs `pg_backup_start(label, fast => true)`
    /// on it within `limit` (the fast checkpoint); returns the session and the
    /// start LSN. The session never times out while idle.
    pub async fn backup_start(&self, user: &str, label: &str, limit: Duration) -> Result<(BackupSession, Lsn), Error> {
        const ACTION: &str = "start the hot backup (pg_backup_start)";
        let attempt = async {
            let client = self.connect(user, limit).await?;
            client.batch_execute("SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0").await?;
            let row = client.query_one("SELECT pg_backup_start($1, true)::text", &[&label]).await?;
            let lsn: String = row.try_get(0)?;
            Ok::<_, tokio_postgres::Error>((client, lsn))
        };
        let (client, lsn) = match tokio::time::timeout(limit + self.timeout, attempt).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => return Err(Error::Postgres { action: ACTION, reason: backup_hint(describe(&err)) }),
            Err(_) => return Err(Error::Timeout { what: ACTION, after: limit + self.timeout }),
        };
        let lsn = lsn.parse().map_err(|err: crate::lsn::LsnParseError| Error::Postgres {
            action: ACTION,
            reason: format!("pg_backup_start returned {}", err),
        })?;
        Ok((BackupSession { client, timeout: limit + self.timeout }, lsn))
    }

    /// `pg_reload_conf()`: postgres rereads its configuration files (pg_hba too).
    pub async fn reload(&self, user: &str) -> Result<(), Error> {
        self.execute(user, "reload the configuration", None, "SELECT pg_reload_conf()", self.timeout).await.map(drop)
    }
}

impl BackupSession {
    /// `pg_backup_stop(wait_for_archive => false)` on the session that
    /// started the backup; the session is closed afterwards.
    pub async fn stop(self) -> Result<BackupEnd, Error> {
        const ACTION: &str = "stop the hot backup (pg_backup_stop)";
        let attempt = async {
            let row = self.client.query_one("SELECT lsn::text, labelfile FROM pg_backup_stop(false)", &[]).await?;
            Ok::<_, tokio_postgres::Error>((row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?))
        };
        let (lsn, label_file) = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                let mut reason = describe(&err);
                if self.client.is_closed() {
                    reason.push_str(
                        " (the backup's session is gone: postgres restarted or was stopped, which aborts a hot backup)",
                    );
                }
                return Err(Error::Postgres { action: ACTION, reason });
            }
            Err(_) => return Err(Error::Timeout { what: ACTION, after: self.timeout }),
        };
        let lsn = lsn.parse().map_err(|err: crate::lsn::LsnParseError| Error::Postgres {
            action: ACTION,
            reason: format!("pg_backup_stop returned {err}"),
        })?;
        Ok(BackupEnd { lsn, label_file })
    }
}

/// Adds what to do when the server is older than the functions' names.
fn backup_hint(reason: String) -> String {
    if reason.contains("pg_backup_start") && reason.contains("does not exist") {
        format!("{reason}: hot backups need PostgreSQL 15 or later (pg_backup_start)")
    } else {
        reason
    }
}

/// Sent (as its own query, so it is in force when the next one is logged or
/// not) before statements that carry password verifiers: none of the ways
/// postgres logs a statement's text applies to this session.
pub const QUIET: &str =
    "SET log_statement = 'none'; SET log_min_duration_statement = -1; SET log_min_error_statement = 'panic'";

impl Db {
    /// `CHECKPOINT`. After a promotion it writes the new timeline into
    /// pg_control, which is where pg_rewind (PostgreSQL 15 and older) reads a
    /// source server's timeline: without it a rewind onto a just-promoted
    /// primary finds "the same timeline" and does nothing.
    pub async fn checkpoint(&self, user: &str, limit: Duration) -> Result<(), Error> {
        self.execute(user, "run a checkpoint", None, "CHECKPOINT", limit).await.map(drop)
    }
}

/// The SQL of [`Db::ensure_roles`], verifiers already computed; run after [`QUIET`].
pub fn ensure_roles_sql(superuser: &str, su_verifier: &str, replication_user: &str, repl_verifier: &str) -> String {
    let repl = quote_ident(replication_user);
    format!(
        "DO $stead$ BEGIN \
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {repl_literal}) THEN \
             CREATE ROLE {repl} WITH REPLICATION LOGIN; \
           END IF; \
         END $stead$; \
         ALTER ROLE {repl} WITH NOSUPERUSER NOCREATEDB NOCREATEROLE REPLICATION LOGIN PASSWORD {repl_verifier}; \
         ALTER ROLE {su} WITH PASSWORD {su_verifier};",
        repl_literal = quote_literal(replication_user),
        repl_verifier = quote_literal(repl_verifier),
        su = quote_ident(superuser),
        su_verifier = quote_literal(su_verifier),
    )
}

/// An SQL identifier: `"…"` with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal: `'…'` with `'` doubled (standard_conforming_strings is on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Turns the probe's text columns into a [`Probe`] (pure).
pub fn parse_probe(columns: &[Option<String>]) -> Result<Probe, ProbeError> {
    let col = |i: usize| columns.get(i).and_then(|c| c.as_deref());
    let lsn = |i: usize| -> Result<Option<Lsn>, ProbeError> {
        col(i).map(|text| text.parse::<Lsn>().map_err(|err| ProbeError::Failed(err.to_string()))).transpose()
    };
    let number = |i: usize| col(i).and_then(|text| text.parse::<u32>().ok());
    let flag = |i: usize| col(i) == Some("t");
    let in_recovery = match col(0) {
        Some("t") => true,
        Some("f") => false,
        other => return Err(ProbeError::Failed(format!("pg_is_in_recovery() returned {other:?}"))),
    };
    Ok(Probe {
        in_recovery,
        current_lsn: lsn(1)?,
        receive_lsn: lsn(2)?,
        replay_lsn: lsn(3)?,
        receiver_status: col(4).map(str::to_owned),
        latest_end_lsn: lsn(5)?,
        received_timeline: number(6),
        current_timeline: col(7).and_then(|hex| u32::from_str_radix(hex, 16).ok()),
        checkpoint_timeline: number(8),
        system_identifier: col(9).map(str::to_owned),
        pending_restart: flag(10),
    })
}

/// The server's own words for a failure, without the driver's prefixes.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn classify(err: &tokio_postgres::Error) -> ProbeError {
    let text = describe(err);
    let not_up = err.code() == Some(&SqlState::CANNOT_CONNECT_NOW)
        || (err.as_db_error().is_none() && (text.contains("No such file") || text.contains("refused")));
    if not_up { ProbeError::NotAccepting(text) } else { ProbeError::Failed(text) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn cols(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn primary_probe() {
        let probe = parse_probe(&cols(&[
            Some("f"),
            Some("0/3000060"),
            None,
            None,
            None,
            None,
            None,
            Some("00000002"),
            Some("1"),
            Some("7393517237520473112"),
            Some("f"),
        ]))
        .unwrap();
        assert!(!probe.in_recovery);
        assert_eq!(probe.current_lsn, Some(Lsn(0x0300_0060)));
        assert_eq!(probe.current_timeline, Some(2));
        assert_eq!(probe.checkpoint_timeline, Some(1));
        assert_eq!(probe.system_identifier.as_deref(), Some("7393517237520473112"));
        assert!(!probe.pending_restart);
    }

    #[test]
    fn replica_probe() {
        let probe = parse_probe(&cols(&[
            Some("t"),
            None,
            Some("0/5000000"),
            Some("0/4000000"),
            Some("streaming"),
            Some("0/6000000"),
            Some("3"),
            None,
            Some("2"),
            Some("1"),
            Some("t"),
        ]))
        .unwrap();
        assert!(probe.in_recovery);
        assert_eq!(probe.receive_lsn, Some(Lsn(0x0500_0000)));
        assert_eq!(probe.replay_lsn, Some(Lsn(0x0400_0000)));
        assert_eq!(probe.latest_end_lsn, Some(Lsn(0x0600_0000)));
        assert_eq!(probe.receiver_status.as_deref(), Some("streaming"));
        assert_eq!(probe.received_timeline, Some(3));
        assert!(probe.pending_restart);
    }

    #[test]
    fn malformed_probe_rows_are_errors() {
        assert!(parse_probe(&cols(&[None])).is_err());
        assert!(parse_probe(&cols(&[Some("t"), Some("zz")])).is_err());
    }

    #[test]
    fn roles_sql_quotes_names_and_never_holds_a_plain_password() {
        let sql = ensure_roles_sql("post\"gres", "SCRAM-SHA-256$4096:a$b:c", "streaming_replica", "SCRAM-SHA-256$x'y");
        assert!(sql.starts_with("DO $stead$"));
        assert!(sql.contains("ALTER ROLE \"post\"\"gres\" WITH PASSWORD 'SCRAM-SHA-256$4096:a$b:c';"));
        assert!(sql.contains("PASSWORD 'SCRAM-SHA-256$x''y'"));
        assert!(sql.contains("rolname = 'streaming_replica'"));
        assert!(sql.contains("CREATE ROLE \"streaming_replica\" WITH REPLICATION LOGIN"));
    }

    #[test]
    fn verifiers_are_scram() {
        let verifier = postgres_protocol::password::scram_sha_256(b"secret");
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
        assert!(!verifier.contains("secret"));
    }
}
