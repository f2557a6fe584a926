//! The one error type of this crate.
//!
//! Every variant names what it was looking at (a file path, a PEM input or an
//! argument) so an operator can act on the message without reading code.
//!
//! Messages are self-contained: the underlying error's text is part of the
//! message (so `error = %err` in a log line says everything), and it is kept
//! in a field named `cause` rather than exposed as `source()`, which would make
//! chain printers such as anyhow repeat it.

use std::path::PathBuf;

/// Why generating, writing, loading or serving a certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// An argument is outside what is accepted.
    #[error("{field} = {value:?} is invalid: {accepted}")]
    InvalidInput {
        /// The argument or flag, e.g. `validity_days` or `dns_names[1]`.
        field: String,
        /// The value that was given.
        value: String,
        /// What would have been accepted.
        accepted: String,
    },

    /// rcgen refused to build a key or certificate.
    #[error("cannot {action}: {cause}")]
    Generate {
        /// What was being generated, e.g. `sign the serving certificate`.
        action: &'static str,
        /// The rcgen error.
        cause: rcgen::Error,
    },

    /// The system clock is before 1970, so no validity period can be computed.
    #[error("the system clock reads a time before 1970-01-01; cannot compute certificate validity")]
    Clock,

    /// A file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },

    /// A file or directory could not be written.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },

    /// Only one of `ca.crt` / `ca.key` exists, so the CA cannot be reused.
    #[error(
        "{} exists but {} does not; reusing a CA needs both (remove both to start a new CA)",
        present.display(),
        missing.display()
    )]
    IncompleteCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },

    /// PEM text is malformed.
    #[error("{origin} is not valid PEM: {cause}")]
    Pem {
        /// The file path or the name of the PEM argument.
        origin: String,
        /// The parse error.
        cause: rustls_pki_types::pem::Error,
    },

    /// PEM text holds no block of the expected kind.
    #[error("{origin} contains no {expected} PEM block")]
    MissingPem {
        /// The file path or the name of the PEM argument.
        origin: String,
        /// The block that was expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },

    /// A certificate is malformed or unusable.
    #[error("{origin} holds an unusable certificate: {reason}")]
    InvalidCertificate {
        /// The file path or the name of the PEM argument.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A private key cannot be used by rustls or rcgen.
    #[error(
        "{origin} holds an unusable private key (accepted: ECDSA P-256/P-384, Ed25519 or RSA, \
         as PKCS#8, SEC1 or PKCS#1 PEM): {reason}"
    )]
    InvalidKey {
        /// The file path or the name of the PEM argument.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The private key does not belong to the certificate.
    #[error("the private key in {key_origin} does not match the certificate in {cert_origin}")]
    KeyMismatch {
        /// Where the certificate came from.
        cert_origin: String,
        /// Where the key came from.
        key_origin: String,
    },

    /// rustls refused the configuration.
    #[error("cannot build the rustls {config} configuration: {cause}")]
    Tls {
        /// Which configuration, `server` or `client`.
        config: &'static str,
        /// The rustls error.
        cause: rustls::Error,
    },
}
