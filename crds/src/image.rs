//! Container image references, judged as the kubelet judges them.
//!
//! The kubelet refuses to start a container whose image does not pass
//! `reference.ParseNormalizedNamed` (github.com/distribution/reference); the
//! pod then sits in `InvalidImageName`. We refuse the same strings at
//! admission, with a message that says which part is wrong:
//!
//! ```text
//! reference := [domain "/"] path [":" tag] ["@" digest]
//! domain    := (host-name | "[" IPv6 "]") [":" port]
//! host-name := label ("." label)*         label: [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! path      := component ("/" component)* component: [a-z0-9]+ joined by ".", "_", "__" or "-"+
//! tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest    := sha256:<64 hex> | sha384:<96 hex> | sha512:<128 hex>   (lowercase hex)
//! ```
//!
//! As in Docker, the first component is a registry only when it is
//! `localhost`, contains `.` or `:`, or has an uppercase letter; otherwise the
//! whole name is a Docker Hub path (`library/postgres` has no registry). The
//! 255-character limit applies to the repository path as Docker Hub would
//! store it (`postgres` counts as `library/postgres`), not to the registry.

use std::fmt;

/// Longest repository path the reference grammar accepts.
const MAX_PATH_LEN: usize = 255;

/// Longest tag the reference grammar accepts.
const MAX_TAG_LEN: usize = 128;

/// Digest algorithms the runtime can verify, with their hex length.
const DIGEST_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// A well-formed image reference, split into its parts as written (no
/// `docker.io/library/` normalisation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Registry host with optional port, when the reference names one.
    pub domain: Option<String>,
    /// Repository path, e.g. `postgres` or `db/postgres`.
    pub path: String,
    /// Tag without the `:`.
    pub tag: Option<String>,
    /// Digest without the `@`, e.g. `sha256:…`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference the kubelet would pull.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Nothing at all.
    #[error("empty; an image reference looks like postgres:17.2 or registry.example.com/db/postgres@sha256:<digest>")]
    Empty,
    /// A character no part of a reference may contain (whitespace, `%`, non-ASCII…).
    #[error(
        "{found:?} at position {position} is not allowed; references use letters, digits and the characters . _ - / \
         : @ [ ]"
    )]
    InvalidCharacter {
        /// Byte offset of the character.
        position: usize,
        /// The character.
        found: char,
    },
    /// A bare 64-hex-digit string, which runtimes treat as an image ID.
    #[error(
        "a 64-digit hexadecimal string is an image ID, not a reference; name the repository, such as \
         postgres@sha256:<id>"
    )]
    HexIdentifier,
    /// Nothing before the `:tag` or `@digest`.
    #[error("no repository name before the tag or digest")]
    MissingRepository,
    /// The registry part is not a host name or address.
    #[error(
        "registry {domain:?} is invalid; a registry is a host name, an IPv4 address or an [IPv6] address, with an \
         optional :port"
    )]
    InvalidDomain {
        /// The registry part as written.
        domain: String,
    },
    /// The repository path has uppercase letters.
    #[error("repository {path:?} must be lowercase")]
    Uppercase {
        /// The repository path as written.
        path: String,
    },
    /// One `/`-separated component of the path is malformed.
    #[error(
        "repository path component {component:?} is invalid; components are lowercase letters and digits joined by \
         one '.', one or two '_', or any number of '-'"
    )]
    InvalidPath {
        /// The offending component (may be empty, as in `a//b`).
        component: String,
    },
    /// The repository path is too long.
    #[error("repository path is {length} characters long; at most 255 are accepted")]
    TooLong {
        /// Length counted as the registry stores it (`postgres` is `library/postgres`).
        length: usize,
    },
    /// The tag is malformed.
    #[error(
        "tag {tag:?} is invalid; a tag is 1 to 128 letters, digits, '_', '.' or '-', and does not start with '.' or \
         '-'"
    )]
    InvalidTag {
        /// The tag as written (without the `:`).
        tag: String,
    },
    /// The digest is malformed or uses an algorithm the runtime cannot verify.
    #[error(
        "digest {digest:?} is invalid; accepted are sha256:, sha384: or sha512: followed by 64, 96 or 128 \
         lowercase hex digits"
    )]
    InvalidDigest {
        /// The digest as written (without the `@`).
        digest: String,
    },
}

impl ImageReference {
    /// Parses `s` as the kubelet's `reference.ParseNormalizedNamed` would.
    ///
    /// # Errors
    /// The first problem found, reading the reference left to right.
    pub fn parse(s: &str) -> Result<ImageReference, ImageError> {
        if s.is_empty() {
            return Err(ImageError::Empty);
        }
        if let Some((position, found)) = s.char_indices().find(|&(_, c)| !is_reference_char(c)) {
            return Err(ImageError::InvalidCharacter { position, found });
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ImageError::HexIdentifier);
        }

        // `@` appears nowhere but before the digest; a `:` after the last `/`
        // starts the tag (one before it belongs to a registry port).
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((before, digest)) => (before, Some(digest)),
            None => (s, None),
        };
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(ImageError::MissingRepository);
        }

        let (domain, path) = split_domain(name)?;
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageError::Uppercase { path: path.to_owned() });
        }
        if let Some(component) = path.split('/').find(|c| !is_path_component(c)) {
            return Err(ImageError::InvalidPath { component: component.to_owned() });
        }
        let stored_len = path.len() + if is_docker_hub(domain) && !path.contains('/') { "library/".len() } else { 0 };
        if stored_len > MAX_PATH_LEN {
            return Err(ImageError::TooLong { length: stored_len });
        }
        if let Some(tag) = tag.filter(|t| !is_tag(t)) {
            return Err(ImageError::InvalidTag { tag: tag.to_owned() });
        }
        if let Some(digest) = digest.filter(|d| !is_digest(d)) {
            return Err(ImageError::InvalidDigest { digest: digest.to_owned() });
        }

        Ok(ImageReference {
            domain: domain.map(str::to_owned),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// True when the reference has neither tag nor digest, or its only pin
    /// is the `latest` tag: pulls are not reproducible. A digest always pins,
    /// whatever the tag says.
    /// The PostgreSQL major version the tag names: the leading number of
    /// `17.2`, `17`, `17.2-bookworm` or `15-alpine`; `None` for a digest
    /// only, `latest`, or a tag that does not start with a version.
    pub fn major_version(&self) -> Option<u32> {
        let tag = self.tag.as_deref()?;
        let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
        let rest = &tag[digits.len()..];
        let ends_well = rest.is_empty() || rest.starts_with('.') || rest.starts_with('-');
        if digits.is_empty() || digits.len() > 4 || !ends_well { None } else { digits.parse().ok() }
    }

    pub fn is_floating(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|tag| tag == "latest")
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(domain) = &self.domain {
            write!(f, "{domain}/")?;
        }
        f.write_str(&self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Characters that may appear somewhere in a reference.
fn is_reference_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@' | '[' | ']')
}

/// Docker's rule for whether the first component names a registry, then the
/// grammar's: a first component that fails as a registry but is a valid path
/// component (`a_b.c/pg`) makes the whole name a path.
fn split_domain(name: &str) -> Result<(Option<&str>, &str), ImageError> {
    let Some((first, rest)) = name.split_once('/') else {
        return Ok((None, name));
    };
    let looks_like_domain =
        first == "localhost" || first.contains(['.', ':']) || first.bytes().any(|b| b.is_ascii_uppercase());
    if !looks_like_domain {
        return Ok((None, name));
    }
    if is_domain(first) {
        Ok((Some(first), rest))
    } else if is_path_component(first) {
        Ok((None, name))
    } else {
        Err(ImageError::InvalidDomain { domain: first.to_owned() })
    }
}

/// Paths on Docker Hub without a namespace are stored under `library/`.
fn is_docker_hub(domain: Option<&str>) -> bool {
    matches!(domain, None | Some("docker.io" | "index.docker.io"))
}

/// `host[:port]` where host is a dotted host name, IPv4 address or `[IPv6]`.
fn is_domain(s: &str) -> bool {
    let (host_ok, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return false;
        };
        let address_ok = !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (address_ok, after)
    } else {
        let end = s.find(':').unwrap_or(s.len());
        (s[..end].split('.').all(is_host_label), &s[end..])
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// One dot-separated label of a registry host name (uppercase allowed).
fn is_host_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut pos = 0;
    loop {
        let run_start = pos;
        while pos < bytes.len() && is_alnum(bytes[pos]) {
            pos += 1;
        }
        if pos == run_start {
            return false;
        }
        if pos == bytes.len() {
            return true;
        }
        let separator_len = match bytes[pos] {
            b'.' => 1,
            b'_' if bytes.get(pos + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[pos..].iter().take_while(|&&b| b == b'-').count(),
            _ => return false,
        };
        pos += separator_len;
    }
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    bytes.len() <= MAX_TAG_LEN
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// `algorithm:hex` for an algorithm the runtime verifies, in lowercase hex of
/// exactly that algorithm's length.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    DIGEST_ALGORITHMS.iter().any(|&(name, len)| name == algorithm && hex.len() == len)
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const SHA256: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    fn parts(domain: Option<&str>, path: &str, tag: Option<&str>, digest: Option<&str>) -> ImageReference {
        ImageReference {
            domain: domain.map(str::to_owned),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        }
    }

    /// Valid references and how they split. Each was also checked against
    /// `reference.ParseNormalizedNamed`.
    #[test]
    fn valid_references() {
        let digest = SHA256;
        let with_digest = format!("postgres@{digest}");
        let tagged_digest = format!("postgres:17@{digest}");
        let long_path = format!("{}/{}", "a".repeat(126), "b".repeat(128));
        let long_tag = format!("pg:{}", "t".repeat(128));
        let sha512 = format!("pg@sha512:{}", "0".repeat(128));
        let sha384 = format!("pg@sha384:{}", "f".repeat(96));
        #[rustfmt::skip]
        let table: Vec<(&str, ImageReference, &str)> = vec![
            ("postgres", parts(None, "postgres", None, None), "Docker Hub official image"),
            ("postgres:17.2", parts(None, "postgres", Some("17.2"), None), "tagged"),
            ("docker.io/library/postgres:17", parts(Some("docker.io"), "library/postgres", Some("17"), None), "fully qualified"),
            ("bitnami/postgresql:17", parts(None, "bitnami/postgresql", Some("17"), None), "no dot or colon: a Hub namespace, not a registry"),
            ("localhost/pg", parts(Some("localhost"), "pg", None, None), "localhost is always a registry"),
            ("localhost:5000/db/pg:1", parts(Some("localhost:5000"), "db/pg", Some("1"), None), "registry port, then tag"),
            ("localhost:5000", parts(None, "localhost", Some("5000"), None), "no slash: the colon starts a tag"),
            ("[::1]:5000/pg", parts(Some("[::1]:5000"), "pg", None, None), "IPv6 registry with port"),
            ("[2001:db8::1]/pg:17", parts(Some("[2001:db8::1]"), "pg", Some("17"), None), "IPv6 registry without port"),
            ("10.0.0.1:443/pg", parts(Some("10.0.0.1:443"), "pg", None, None), "IPv4 registry"),
            ("Registry.Example.COM/pg", parts(Some("Registry.Example.COM"), "pg", None, None), "registry host names may be uppercase"),
            ("Foo/pg", parts(Some("Foo"), "pg", None, None), "an uppercase first component is taken as a registry"),
            ("my-registry.example.com:5000/team/sub/pg:v1.2.3-rc_1", parts(Some("my-registry.example.com:5000"), "team/sub/pg", Some("v1.2.3-rc_1"), None), "deep path, busy tag"),
            ("a_b.c/pg", parts(None, "a_b.c/pg", None, None), "not a host name (underscore) but a valid path component: the grammar reads it as a path"),
            ("pg-x__y.z---w", parts(None, "pg-x__y.z---w", None, None), "every separator kind"),
            ("pg:Latest_1", parts(None, "pg", Some("Latest_1"), None), "tags may be uppercase and start with a letter"),
            ("pg:_x", parts(None, "pg", Some("_x"), None), "tags may start with an underscore"),
            (&with_digest, parts(None, "postgres", None, Some(digest)), "digest only"),
            (&tagged_digest, parts(None, "postgres", Some("17"), Some(digest)), "tag and digest"),
            (&sha512, parts(None, "pg", None, Some(&sha512[3..])), "sha512 digest"),
            (&sha384, parts(None, "pg", None, Some(&sha384[3..])), "sha384 digest (go-digest v1.0.0 registers it)"),
            (&long_path, parts(None, &long_path, None, None), "path of exactly 255 characters"),
            (&long_tag, parts(None, "pg", Some(&long_tag[3..]), None), "tag of exactly 128 characters"),
        ];
        for (input, want, why) in &table {
            let got = ImageReference::parse(input);
            assert_eq!(got.as_ref(), Ok(want), "{input:?}: {why}");
            assert_eq!(got.unwrap().to_string(), *input, "{input:?} displays as written");
        }
    }

    /// Invalid references and the part blamed. Each was also checked
    /// against `reference.ParseNormalizedNamed`, which refuses them all.
    #[test]
    fn invalid_references() {
        let hex64 = "a".repeat(64);
        let long_tag = format!("pg:{}", "t".repeat(129));
        let long_path = format!("{}/{}", "a".repeat(128), "b".repeat(128));
        let long_hub_name = "p".repeat(250);
        let upper_digest = format!("pg@sha256:{}", "A".repeat(64));
        let short_digest = format!("pg@sha256:{}", "a".repeat(63));
        let md5 = format!("pg@md5:{}", "a".repeat(32));
        let two_at = format!("pg@{SHA256}@{SHA256}");
        let digest_then_tag = format!("pg@{SHA256}:17");
        let empty_path = |c: &str| ImageError::InvalidPath { component: c.to_owned() };
        let tag = |t: &str| ImageError::InvalidTag { tag: t.to_owned() };
        let digest = |d: &str| ImageError::InvalidDigest { digest: d.to_owned() };
        let domain = |d: &str| ImageError::InvalidDomain { domain: d.to_owned() };
        #[rustfmt::skip]
        let table: Vec<(&str, ImageError, &str)> = vec![
            ("", ImageError::Empty, "empty"),
            ("Postgres", ImageError::Uppercase { path: "Postgres".into() }, "uppercase path"),
            ("library/Postgres:17", ImageError::Uppercase { path: "library/Postgres".into() }, "uppercase in a later component"),
            ("pg:", tag(""), "empty tag"),
            (":17", ImageError::MissingRepository, "tag without a name"),
            ("@sha256:abc", ImageError::MissingRepository, "digest without a name"),
            ("pg::1", empty_path("pg:"), "two colons: the name keeps one"),
            ("pg:17:18", empty_path("pg:17"), "two tags"),
            (&long_tag, tag(&long_tag[3..]), "tag of 129 characters"),
            ("pg:.x", tag(".x"), "tag starting with a dot"),
            ("pg:-x", tag("-x"), "tag starting with a dash"),
            ("pg@", digest(""), "empty digest"),
            ("pg@sha256", digest("sha256"), "digest without hex"),
            (&short_digest, digest(&short_digest[3..]), "63 hex digits"),
            (&upper_digest, digest(&upper_digest[3..]), "uppercase hex is refused by go-digest"),
            (&md5, digest(&md5[3..]), "unsupported algorithm"),
            (&two_at, digest(&two_at[3..]), "two digests"),
            (&digest_then_tag, digest(&digest_then_tag[3..]), "tag after the digest"),
            ("-pg", empty_path("-pg"), "leading separator"),
            ("pg-", empty_path("pg-"), "trailing separator"),
            ("pg.", empty_path("pg."), "trailing dot"),
            ("p..g", empty_path("p..g"), "two dots"),
            ("p___g", empty_path("p___g"), "three underscores"),
            ("p.-g", empty_path("p.-g"), "mixed separators"),
            ("a//b", empty_path(""), "empty component"),
            ("pg/", empty_path(""), "trailing slash"),
            ("/pg", empty_path(""), "leading slash"),
            ("pg 17", ImageError::InvalidCharacter { position: 2, found: ' ' }, "whitespace"),
            (" pg", ImageError::InvalidCharacter { position: 0, found: ' ' }, "leading whitespace"),
            ("pg\n", ImageError::InvalidCharacter { position: 2, found: '\n' }, "trailing newline"),
            ("pg%2F", ImageError::InvalidCharacter { position: 2, found: '%' }, "percent-encoding"),
            ("pög", ImageError::InvalidCharacter { position: 1, found: 'ö' }, "non-ASCII"),
            ("http://x/pg", domain("http:"), "a URL is not a reference"),
            ("host:port/pg", domain("host:port"), "non-numeric port"),
            ("host:/pg", domain("host:"), "empty port"),
            ("-host.com/pg", domain("-host.com"), "host label starting with a dash"),
            ("host-.com/pg", domain("host-.com"), "host label ending with a dash"),
            ("[::1/pg", domain("[::1"), "unclosed IPv6 bracket"),
            ("[]:5000/pg", domain("[]:5000"), "empty IPv6 address"),
            ("[::g]/pg", domain("[::g]"), "non-hex IPv6"),
            ("[::1]x/pg", domain("[::1]x"), "junk after the IPv6 bracket"),
            ("exa_mple.com:5000/pg", domain("exa_mple.com:5000"), "underscore in a registry with a port"),
            (&hex64, ImageError::HexIdentifier, "a bare image ID"),
            (&long_path, ImageError::TooLong { length: 257 }, "path over 255 characters"),
            (&long_hub_name, ImageError::TooLong { length: 258 }, "Hub names count as library/<name>"),
        ];
        for (input, want, why) in &table {
            assert_eq!(ImageReference::parse(input).as_ref(), Err(want), "{input:?}: {why}");
        }
    }

    #[test]
    fn floating_references() {
        let floating = |s: &str| ImageReference::parse(s).unwrap().is_floating();
        assert!(floating("postgres"), "no tag pulls latest");
        assert!(floating("postgres:latest"));
        assert!(floating("registry.example.com:5000/db/postgres:latest"));
        assert!(!floating("postgres:17.2"));
        assert!(!floating("postgres:Latest"), "tags are case-sensitive; Latest is a real tag");
        assert!(!floating(&format!("postgres@{SHA256}")), "a digest pins");
        assert!(!floating(&format!("postgres:latest@{SHA256}")), "a digest pins even with :latest");
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let err = ImageReference::parse("pg:").unwrap_err().to_string();
        assert!(err.contains("tag \"\"") && err.contains("1 to 128"), "{err}");
        let err = ImageReference::parse("Postgres").unwrap_err().to_string();
        assert!(err.contains("\"Postgres\" must be lowercase"), "{err}");
        let err = ImageReference::parse("pg@md5:0").unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
        let err = ImageReference::parse("pg 1").unwrap_err().to_string();
        assert!(err.contains("' ' at position 2"), "{err}");
    }
}
