//! `stead-certs`: writes a development CA and a serving certificate for the webhook.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use stead_certs::{IssueRequest, MAX_VALIDITY_DAYS, issue_into};

/// Write ca.crt, ca.key, tls.crt and tls.key (keys mode 0600) into a directory.
#[derive(Debug, Parser)]
#[command(name = "stead-certs", version, about)]
struct Args {
    /// Directory to write into (created if missing).
    #[arg(long, env = "STEAD_CERTS_OUT_DIR")]
    out_dir: PathBuf,

    /// DNS name of the serving certificate (repeatable, or comma-separated in the env var).
    #[arg(long = "dns", env = "STEAD_CERTS_DNS", value_delimiter = ',', default_value = "localhost")]
    dns: Vec<String>,

    /// IP address of the serving certificate (repeatable, or comma-separated in the env var).
    #[arg(long = "ip", env = "STEAD_CERTS_IP", value_delimiter = ',', default_value = "127.0.0.1")]
    ip: Vec<IpAddr>,

    /// Common name of a newly generated CA.
    #[arg(long, env = "STEAD_CERTS_COMMON_NAME", default_value = "stead development CA")]
    common_name: String,

    /// Validity of the serving certificate, in days.
    #[arg(long, env = "STEAD_CERTS_DAYS", default_value_t = 365, value_parser = days_parser())]
    days: u32,

    /// Validity of a newly generated CA, in days.
    #[arg(long, env = "STEAD_CERTS_CA_DAYS", default_value_t = 3650, value_parser = days_parser())]
    ca_days: u32,

    /// Issue from the ca.crt + ca.key already in --out-dir (a new CA if there are none).
    #[arg(long, env = "STEAD_CERTS_REUSE_CA")]
    reuse_ca: bool,
}

/// Rejects out-of-range validities with clap's message, which names the flag.
fn days_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_VALIDITY_DAYS))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let request = IssueRequest {
        out_dir: args.out_dir,
        dns_names: args.dns,
        ips: args.ip,
        ca_common_name: args.common_name,
        validity_days: args.days,
        ca_validity_days: args.ca_days,
        reuse_ca: args.reuse_ca,
    };
    let issued =
        issue_into(&request).with_context(|| format!("issuing certificates into {}", request.out_dir.display()))?;
    eprintln!("stead-certs: {} CA", if issued.ca_reused { "reused the existing" } else { "generated a new" });
    for path in &issued.paths {
        println!("{}", path.display());
    }
    Ok(())
}
