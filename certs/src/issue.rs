//! The `stead-certs` workflow: get a CA (new, or the one already in the
//! directory), issue a serving certificate, write everything.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::bundle::{self, CA_FILE, CERT_FILE, KEY_FILE};
use crate::error::CertError;
use crate::generate::CertificateAuthority;

/// What to issue and where.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Directory receiving `ca.crt`, `ca.key`, `tls.crt`, `tls.key`.
    pub out_dir: PathBuf,
    /// DNS names of the serving certificate.
    pub dns_names: Vec<String>,
    /// IP addresses of the serving certificate.
    pub ips: Vec<IpAddr>,
    /// Common name of a newly generated CA (ignored when the CA is reused).
    pub ca_common_name: String,
    /// Validity of the serving certificate.
    pub validity_days: u32,
    /// Validity of a newly generated CA.
    pub ca_validity_days: u32,
    /// Issue from the CA already in `out_dir` when there is one, so clients
    /// that trust it keep working across a rotation.
    pub reuse_ca: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Whether the CA already in the directory was used.
    pub ca_reused: bool,
    /// Every file written, in a stable order: ca.crt, ca.key, tls.crt, tls.key.
    pub paths: Vec<PathBuf>,
}

/// Issues a serving certificate into `request.out_dir`, reusing or creating the CA.
pub fn issue_into(request: &IssueRequest) -> Result<Issued, CertError> {
    let dir = &request.out_dir;
    let existing = if request.reuse_ca { bundle::load_ca(dir)? } else { None };
    let ca_reused = existing.is_some();
    let ca = match existing {
        Some(ca) => ca,
        None => CertificateAuthority::generate(&request.ca_common_name, request.ca_validity_days)
            .map_err(|err| rename_days_field(err, "ca_validity_days"))?,
    };
    let serving = ca.issue_serving(&request.dns_names, &request.ips, request.validity_days)?;
    // The CA key first: a crash afterwards still leaves a reusable CA.
    let ca_key = bundle::write_ca_key(dir, &ca)?;
    bundle::write_bundle(dir, &ca, &serving)?;
    Ok(Issued { ca_reused, paths: vec![dir.join(CA_FILE), ca_key, dir.join(CERT_FILE), dir.join(KEY_FILE)] })
}

/// Both validities are checked as `validity_days`; say which one was wrong.
fn rename_days_field(err: CertError, field: &str) -> CertError {
    match err {
        CertError::InvalidInput { field: original, value, accepted } if original == "validity_days" => {
            CertError::InvalidInput { field: field.to_owned(), value, accepted }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::fs;
    use std::net::Ipv4Addr;

    use super::*;

    fn request(dir: &std::path::Path, reuse_ca: bool) -> IssueRequest {
        IssueRequest {
            out_dir: dir.to_path_buf(),
            dns_names: vec!["localhost".to_owned()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ca_common_name: "test CA".to_owned(),
            validity_days: 1,
            ca_validity_days: 2,
            reuse_ca,
        }
    }

    #[test]
    fn reuse_keeps_the_ca_and_replaces_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let first = issue_into(&request(dir.path(), true)).unwrap();
        assert!(!first.ca_reused, "nothing to reuse on the first run");
        let ca_before = fs::read(dir.path().join(CA_FILE)).unwrap();
        let leaf_before = fs::read(dir.path().join(CERT_FILE)).unwrap();

        let second = issue_into(&request(dir.path(), true)).unwrap();
        assert!(second.ca_reused);
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), ca_before);
        assert_ne!(fs::read(dir.path().join(CERT_FILE)).unwrap(), leaf_before);
    }

    #[test]
    fn without_reuse_a_new_ca_is_made() {
        let dir = tempfile::tempdir().unwrap();
        issue_into(&request(dir.path(), false)).unwrap();
        let ca_before = fs::read(dir.path().join(CA_FILE)).unwrap();
        let again = issue_into(&request(dir.path(), false)).unwrap();
        assert!(!again.ca_reused);
        assert_ne!(fs::read(dir.path().join(CA_FILE)).unwrap(), ca_before);
        assert_eq!(again.paths.len(), 4);
    }

    #[test]
    fn a_bad_ca_validity_names_its_own_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path(), false);
        req.ca_validity_days = 0;
        let err = issue_into(&req).unwrap_err();
        assert!(err.to_string().starts_with("ca_validity_days"), "{err}");
    }
}
