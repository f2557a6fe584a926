//! What stead makes postgres run with, rendered as text: pure functions.
//!
//! Three layers, from lowest to highest precedence:
//!
//! 1. initdb's `postgresql.conf`, untouched, so its locale and sizing stay.
//! 2. `PGDATA/stead.conf` ([`USER_CONF_FILE`]), the `config_file` postgres
//!    reads: it includes `postgresql.conf`, then sets the user's parameters
//!    (`STEAD_PARAMETERS`). Reloadable like any config file.
//! 3. The stead-owned parameters ([`OWNED_PARAMETERS`]), passed as `-c` on
//!    the postmaster's command line: the highest precedence PostgreSQL has,
//!    above `postgresql.auto.conf` (`ALTER SYSTEM`). A user parameter with an
//!    owned name is dropped (and reported) before it is written.
//!
//! Client authentication is `PGDATA/stead_hba.conf` ([`HBA_FILE`]), set as
//! `hba_file` on the command line. Passwords never appear on a command line:
//! libpq reads them from a pgpass file in the private run directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

pub use stead_crds::names::OWNED_PARAMETERS;
use stead_crds::names::is_owned_parameter;

/// The config file postgres is pointed at (`config_file`), in PGDATA.
pub const USER_CONF_FILE: &str = "stead.conf";
/// The client authentication file (`hba_file`), in PGDATA.
pub const HBA_FILE: &str = "stead_hba.conf";
/// The pgpass file, in the run directory.
pub const PGPASS_FILE: &str = "pgpass";

/// `max_wal_senders`: a handful of replicas, a clone and a rewind at once.
pub const MAX_WAL_SENDERS: u32 = 10;
/// `max_replication_slots`: stead uses none today; room for backup tools.
pub const MAX_REPLICATION_SLOTS: u32 = 10;
/// `wal_keep_size`: WAL kept for replicas that fall behind or restart.
pub const WAL_KEEP_SIZE: &str = "512MB";
/// Longest parameter value accepted (postgres itself has no small limit).
pub const MAX_VALUE_LEN: usize = 8192;
/// Longest parameter name postgres accepts (NAMEDATALEN - 1).
pub const MAX_NAME_LEN: usize = 63;

/// Why the user's parameters cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("STEAD_PARAMETERS is not a JSON object of parameter names to values: {reason}")]
    NotAnObject { reason: String },
    #[error(
        "parameter name {name:?} is invalid: a postgresql.conf name is letters, digits and '_' \
         (at most {MAX_NAME_LEN}, not starting with a digit), optionally as prefix.name for an extension"
    )]
    InvalidName { name: String },
    #[error("parameter {name}: the value must be a string, number or boolean, not {found}")]
    InvalidValueType { name: String, found: &'static str },
    #[error("parameter {name}: the value contains a line break or NUL, which postgresql.conf cannot hold")]
    InvalidValue { name: String },
    #[error("parameter {name}: the value is longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong { name: String },
    #[error("the {what} contains a line break or NUL and cannot be written to {file}")]
    Unrepresentable { what: &'static str, file: &'static str },
}

/// Parses `STEAD_PARAMETERS`: a JSON object whose values are strings (numbers
/// and booleans are taken as their JSON text). Names are lower-cased, as
/// postgres compares them case-insensitively.
pub fn parse_parameters(json: &str) -> Result<BTreeMap<String, String>, ConfError> {
    let trimmed = json.trim();
    if trimmed.is_empty() {
        return Ok(BTreeMap::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(trimmed).map_err(|err| ConfError::NotAnObject { reason: err.to_string() })?;
    let serde_json::Value::Object(object) = value else {
        return Err(ConfError::NotAnObject { reason: format!("found {}", json_kind(&value)) });
    };
    let mut parameters = BTreeMap::new();
    for (name, value) in object {
        check_name(&name)?;
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => if flag { "on" } else { "off" }.to_owned(),
            other => return Err(ConfError::InvalidValueType { name, found: json_kind(&other) }),
        };
        if text.len() > MAX_VALUE_LEN {
            return Err(ConfError::ValueTooLong { name });
        }
        if text.contains(['\n', '\r', '\0']) {
            return Err(ConfError::InvalidValue { name });
        }
        parameters.insert(name.to_ascii_lowercase(), text);
    }
    Ok(parameters)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn check_name(name: &str) -> Result<(), ConfError> {
    let part_ok = |part: &str| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    };
    let parts: Vec<&str> = name.split('.').collect();
    let ok = name.len() <= MAX_NAME_LEN && parts.len() <= 2 && parts.iter().all(|part| part_ok(part));
    if ok { Ok(()) } else { Err(ConfError::InvalidName { name: name.to_owned() }) }
}

/// The user's config file and the owned names that were dropped from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConf {
    pub text: String,
    /// User parameters with a stead-owned name; they were not written.
    pub ignored: Vec<String>,
}

/// Renders [`USER_CONF_FILE`]: `postgresql.conf` first, then the user's
/// parameters (sorted), owned names left out.
pub fn render_user_conf(parameters: &BTreeMap<String, String>) -> UserConf {
    let mut text = String::from(
        "# Written by stead-instance at every start; edits are lost.\n\
         # Parameters come from the DatabaseCluster; the ones stead owns are on the\n\
         # postmaster's command line and win over this file and ALTER SYSTEM.\n\
         include_if_exists = 'postgresql.conf'\n",
    );
    let mut ignored = Vec::new();
    for (name, value) in parameters {
        if is_owned_parameter(name) {
            ignored.push(name.clone());
            continue;
        }
        text.push_str(name);
        text.push_str(" = ");
        text.push_str(&conf_quote(value));
        text.push('\n');
    }
    UserConf { text, ignored }
}

/// A postgresql.conf string literal: `'…'` with `\` and `'` escaped.
pub fn conf_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// Renders [`HBA_FILE`]: trust over the private unix socket (its directory is
/// mode 0700, so only the manager's own OS user reaches it), SCRAM over TCP.
pub fn render_hba(replication_user: &str) -> String {
    format!(
        "# Written by stead-instance at every start; edits are lost.\n\
         # TYPE  DATABASE     USER  ADDRESS  METHOD\n\
         local   all          all            trust\n\
         host    replication  {replication_user}  all  scram-sha-256\n\
         host    all          all   all      scram-sha-256\n"
    )
}

/// Renders [`HBA_FILE`] while restored data is brought up: the private unix
/// socket only. Every TCP connection is refused until this cluster's
/// passwords replaced the source cluster's, so those never work here.
pub fn render_hba_local_only() -> String {
    "# Written by stead-instance while restoring a backup; TCP connections are refused until the\n\
     # passwords of this cluster's credentials Secret are set.\n\
     # TYPE  DATABASE     USER  ADDRESS  METHOD\n\
     local   all          all            trust\n"
        .to_owned()
}

/// One pgpass line's user and password; host, port and database are `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassEntry<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// Renders a pgpass file, escaping `\` and `:` as libpq expects.
pub fn render_pgpass(entries: &[PassEntry<'_>]) -> Result<String, ConfError> {
    let escape = |field: &str| field.replace('\\', "\\\\").replace(':', "\\:");
    let mut text = String::new();
    for entry in entries {
        if entry.user.contains(['\n', '\r', '\0']) || entry.password.contains(['\n', '\r', '\0']) {
            return Err(ConfError::Unrepresentable { what: "user name or password", file: PGPASS_FILE });
        }
        text.push_str(&format!("*:*:*:{}:{}\n", escape(entry.user), escape(entry.password)));
    }
    Ok(text)
}

/// A libpq connection-string value: `'…'` with `\` and `'` escaped.
pub fn conninfo_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

/// A libpq connection string to `upstream` as `user`, the password read from `passfile`.
pub fn conninfo(upstream: &Upstream, user: &str, passfile: &Path, application_name: &str, dbname: &str) -> String {
    format!(
        "host={} port={} user={} dbname={} passfile={} application_name={} connect_timeout=10",
        conninfo_quote(&upstream.host),
        upstream.port,
        conninfo_quote(user),
        conninfo_quote(dbname),
        conninfo_quote(&passfile.to_string_lossy()),
        conninfo_quote(application_name),
    )
}

/// What the owned parameters depend on.
#[derive(Debug, Clone)]
pub struct Owned<'a> {
    pub pgdata: &'a Path,
    pub port: u16,
    pub run_dir: &'a Path,
    /// `cluster_name`: shows in process titles and as the replica's
    /// `application_name` on the primary.
    pub instance_name: &'a str,
    /// `primary_conninfo` of a replica; `None` on a primary.
    pub primary_conninfo: Option<String>,
    /// The pod's own address; postgres listens on it and on localhost
    /// (for `kubectl port-forward`) only. `None`: every address.
    pub pod_ip: Option<std::net::IpAddr>,
}

/// `listen_addresses` for an instance at `pod_ip`.
///
/// Binding the pod's address keeps instances that share a network (several
/// on one host) from taking each other's port; localhost stays, because
/// `kubectl port-forward` connects to it inside the pod. postgres starts as
/// long as one of the addresses can be bound.
pub fn listen_addresses(pod_ip: Option<std::net::IpAddr>) -> String {
    match pod_ip {
        Some(ip) => format!("{ip},localhost"),
        None => "*".to_owned(),
    }
}

/// Every owned parameter with its value, in [`OWNED_PARAMETERS`] order
/// (`data_directory` is `-D` and not repeated).
pub fn owned_parameters(owned: &Owned<'_>) -> Vec<(&'static str, String)> {
    let path = |file: &str| owned.pgdata.join(file).to_string_lossy().into_owned();
    vec![
        ("cluster_name", owned.instance_name.to_owned()),
        ("config_file", path(USER_CONF_FILE)),
        ("hba_file", path(HBA_FILE)),
        ("hot_standby", "on".to_owned()),
        ("listen_addresses", listen_addresses(owned.pod_ip)),
        ("max_replication_slots", MAX_REPLICATION_SLOTS.to_string()),
        ("max_wal_senders", MAX_WAL_SENDERS.to_string()),
        ("port", owned.port.to_string()),
        ("primary_conninfo", owned.primary_conninfo.clone().unwrap_or_default()),
        ("primary_slot_name", String::new()),
        ("unix_socket_directories", owned.run_dir.to_string_lossy().into_owned()),
        ("wal_keep_size", WAL_KEEP_SIZE.to_owned()),
        ("wal_level", "replica".to_owned()),
        ("wal_log_hints", "on".to_owned()),
    ]
}

/// The postmaster's arguments: `-D PGDATA` and `-c name=value` per owned
/// parameter. Values on the command line are taken verbatim (no quoting).
pub fn postmaster_args(owned: &Owned<'_>) -> Vec<OsString> {
    let mut args = vec![OsString::from("-D"), owned.pgdata.as_os_str().to_owned()];
    for (name, value) in owned_parameters(owned) {
        args.push(OsString::from("-c"));
        args.push(OsString::from(format!("{name}={value}")));
    }
    args
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::PathBuf;

    use super::*;

    fn owned(conninfo: Option<&str>) -> (PathBuf, PathBuf, Option<String>) {
        (PathBuf::from("/data/pgdata"), PathBuf::from("/run/stead"), conninfo.map(str::to_owned))
    }

    #[test]
    fn parameters_table() {
        let ok: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("{}", &[]),
            (r#"{"work_mem":"64MB"}"#, &[("work_mem", "64MB")]),
            (r#"{"Work_Mem":"64MB"}"#, &[("work_mem", "64MB")]),
            (r#"{"max_connections":200}"#, &[("max_connections", "200")]),
            (r#"{"jit":false}"#, &[("jit", "off")]),
            (r#"{"pg_stat_statements.max":"5000"}"#, &[("pg_stat_statements.max", "5000")]),
            (r#"{"search_path":"\"$user\", public"}"#, &[("search_path", "\"$user\", public")]),
        ];
        for (json, expected) in ok {
            let parsed = parse_parameters(json).unwrap();
            let expected: BTreeMap<String, String> =
                expected.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            assert_eq!(parsed, expected, "{json}");
        }
        let bad: &[(&str, &str)] = &[
            ("[]", "not a JSON object"),
            ("{", "not a JSON object"),
            (r#"{"1abc":"x"}"#, "is invalid"),
            (r#"{"a b":"x"}"#, "is invalid"),
            (r#"{"a.b.c":"x"}"#, "is invalid"),
            (r#"{"":"x"}"#, "is invalid"),
            (r#"{"work_mem":null}"#, "not null"),
            (r#"{"work_mem":["a"]}"#, "not an array"),
            (r#"{"work_mem":"a\nb"}"#, "line break"),
        ];
        for (json, message) in bad {
            let err = parse_parameters(json).unwrap_err().to_string();
            assert!(err.contains(message), "{json}: {err}");
        }
        let long = format!(r#"{{"work_mem":"{}"}}"#, "x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(parse_parameters(&long), Err(ConfError::ValueTooLong { .. })));
    }

    #[test]
    fn user_conf_includes_postgresql_conf_first_and_drops_owned_names() {
        let params =
            parse_parameters(r#"{"work_mem":"64MB","port":"1","WAL_LEVEL":"minimal","app.x":"it's"}"#).unwrap();
        let conf = render_user_conf(&params);
        let lines: Vec<&str> = conf.text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["include_if_exists = 'postgresql.conf'", "app.x = 'it''s'", "work_mem = '64MB'"]);
        assert_eq!(conf.ignored, ["port", "wal_level"]);
    }

    #[test]
    fn quoting_table() {
        let rows = [("plain", "'plain'", "'plain'"), ("it's", "'it''s'", "'it\\'s'"), ("a\\b", "'a\\\\b'", "'a\\\\b'")];
        for (raw, conf, conninfo) in rows {
            assert_eq!(conf_quote(raw), conf, "{raw}");
            assert_eq!(conninfo_quote(raw), conninfo, "{raw}");
        }
    }

    #[test]
    fn hba_trusts_the_socket_and_wants_scram_over_tcp() {
        let hba = render_hba("streaming_replica");
        let rules: Vec<Vec<&str>> =
            hba.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rules,
            [
                vec!["local", "all", "all", "trust"],
                vec!["host", "replication", "streaming_replica", "all", "scram-sha-256"],
                vec!["host", "all", "all", "all", "scram-sha-256"],
            ]
        );
    }

    #[test]
    fn pgpass_escapes_separators() {
        let text = render_pgpass(&[
            PassEntry { user: "streaming_replica", password: "a:b\\c" },
            PassEntry { user: "postgres", password: "p" },
        ])
        .unwrap();
        assert_eq!(text, "*:*:*:streaming_replica:a\\:b\\\\c\n*:*:*:postgres:p\n");
        assert!(render_pgpass(&[PassEntry { user: "u", password: "a\nb" }]).is_err());
    }

    #[test]
    fn conninfo_names_host_port_user_and_passfile() {
        let upstream = Upstream { host: "orders-rw".to_owned(), port: 5432 };
        let text = conninfo(&upstream, "streaming_replica", Path::new("/run/stead/pgpass"), "orders-1", "replication");
        assert_eq!(
            text,
            "host='orders-rw' port=5432 user='streaming_replica' dbname='replication' passfile='/run/stead/pgpass' \
             application_name='orders-1' connect_timeout=10"
        );
    }

    #[test]
    fn every_owned_parameter_is_on_the_command_line() {
        let (pgdata, run_dir, conninfo) = owned(Some("host='x'"));
        let owned = Owned {
            pgdata: &pgdata,
            port: 5433,
            run_dir: &run_dir,
            instance_name: "orders-1",
            primary_conninfo: conninfo,
            pod_ip: Some("10.244.1.7".parse().unwrap()),
        };
        let names: Vec<&str> = owned_parameters(&owned).iter().map(|(name, _)| *name).collect();
        let expected: Vec<&str> = OWNED_PARAMETERS.iter().copied().filter(|p| *p != "data_directory").collect();
        assert_eq!(names, expected);

        let args = postmaster_args(&owned);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[..2], ["-D", "/data/pgdata"]);
        assert!(args.contains(&"port=5433".to_owned()));
        assert!(args.contains(&"config_file=/data/pgdata/stead.conf".to_owned()));
        assert!(args.contains(&"hba_file=/data/pgdata/stead_hba.conf".to_owned()));
        assert!(args.contains(&"unix_socket_directories=/run/stead".to_owned()));
        assert!(args.contains(&"primary_conninfo=host='x'".to_owned()));
        assert!(args.contains(&"wal_log_hints=on".to_owned()));
        assert!(args.contains(&"listen_addresses=10.244.1.7,localhost".to_owned()));
        assert_eq!(args.iter().filter(|a| *a == "-c").count(), expected.len());
    }

    #[test]
    fn a_primary_clears_any_primary_conninfo() {
        let (pgdata, run_dir, _) = owned(None);
        let owned = Owned {
            pgdata: &pgdata,
            port: 5432,
            run_dir: &run_dir,
            instance_name: "orders-0",
            primary_conninfo: None,
            pod_ip: None,
        };
        let args: Vec<String> = postmaster_args(&owned).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.contains(&"primary_conninfo=".to_owned()));
        assert!(args.contains(&"primary_slot_name=".to_owned()));
        assert!(args.contains(&"listen_addresses=*".to_owned()), "no pod address: every address");
    }
}
