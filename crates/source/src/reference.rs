//! [`ImageRef`]: an image reference as the user typed it, with Docker's defaults applied.
//!
//! Two forms:
//! - `[REGISTRY/]REPO[:TAG][@sha256:HEX]` — no registry means `docker.io`, a single-name repository
//!   on Docker Hub means `library/NAME`, no tag and no digest means `latest`. A `docker://` prefix
//!   (skopeo's transport syntax) is accepted and dropped.
//! - `oci:DIR[:TAG]` — an OCI image layout directory (skopeo's syntax: the directory ends at the
//!   first `:`). Without a tag the image tagged `latest` is used, or the only image in the layout.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::SourceError;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An image in a registry.
    Registry {
        /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
        registry: String,
        /// Repository path, e.g. `library/debian`.
        repository: String,
        /// Tag; `None` only when a digest is given.
        tag: Option<String>,
        /// Manifest digest; takes precedence over the tag when resolving.
        digest: Option<Digest>,
    },
    /// An image in a local OCI image layout.
    Layout {
        /// The layout directory (holds `index.json` and `blobs/`).
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick; `None` = "latest" or the only image.
        tag: Option<String>,
    },
}

impl ImageRef {
    /// The registry host for registry references.
    pub fn registry(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { registry, .. } => Some(registry),
            ImageRef::Layout { .. } => None,
        }
    }
}

impl FromStr for ImageRef {
    type Err = SourceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid =
            |reason: &str| SourceError::InvalidReference { input: input.to_owned(), reason: reason.to_owned() };
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = match rest.split_once(':') {
                Some((dir, tag)) => (dir, Some(tag)),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(invalid("the OCI layout directory is empty"));
            }
            if let Some(tag) = tag {
                if tag.is_empty() || tag.contains(['/', '\0']) {
                    return Err(invalid("the OCI layout tag is empty or contains '/'"));
                }
            }
            return Ok(ImageRef::Layout { dir: PathBuf::from(dir), tag: tag.map(str::to_owned) });
        }

        let rest = input.strip_prefix("docker://").unwrap_or(input);
        if rest.contains("://") {
            return Err(invalid("unknown transport; use REGISTRY/REPO[:TAG] or oci:DIR[:TAG]"));
        }
        let (name_tag, digest) = match rest.split_once('@') {
            Some((name_tag, digest)) => {
                let digest: Digest = digest
                    .parse()
                    .map_err(|_| invalid("the digest after '@' must be sha256: and 64 lowercase hex digits"))?;
                (name_tag, Some(digest))
            }
            None => (rest, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let at = last_slash + colon;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(
                    "a tag is 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_owned(), rest.to_owned()),
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        if !valid_host(&registry) {
            return Err(invalid("the registry must be a host name or IP address with an optional :PORT"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || repository.len() > 255 {
            return Err(invalid("the repository name is empty or longer than 255 characters"));
        }
        if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
            let reason = if bad.bytes().any(|b| b.is_ascii_uppercase()) {
                format!("repository component {bad:?} must be lowercase")
            } else {
                format!(
                    "repository component {bad:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'"
                )
            };
            return Err(invalid(&reason));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef::Registry { registry, repository, tag, digest })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry { registry, repository, tag, digest } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
            ImageRef::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
        }
    }
}

/// Docker's rule: the first path component is a registry if it has a '.' or ':' or is localhost.
fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost" || component.starts_with('[')
}

fn valid_host(host: &str) -> bool {
    let (name, port) = split_host_port(host);
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    port_ok && name_ok
}

/// Splits `host[:port]`, `[v6][:port]`.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        match host.find(']') {
            Some(end) => {
                let rest = &host[end + 1..];
                (&host[..=end], rest.strip_prefix(':'))
            }
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    }
}

/// Registries Docker talks plain HTTP to without being told: localhost, 127.0.0.0/8 and ::1.
pub fn is_local_registry(registry: &str) -> bool {
    let (name, _) = split_host_port(registry);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators between alphanumeric runs: '.', '_', '__' or any number of '-'.
    for run in component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        let ok = run.is_empty() || run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> (String, String, Option<String>, Option<Digest>) {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry { registry, repository, tag, digest } => (registry, repository, tag, digest),
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    fn owned(r: &str, p: &str, t: Option<&str>, d: Option<&str>) -> (String, String, Option<String>, Option<Digest>) {
        (r.into(), p.into(), t.map(Into::into), d.map(|d| d.parse().unwrap()))
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_defaults() {
        assert_eq!(reg("debian"), owned("docker.io", "library/debian", Some("latest"), None));
        assert_eq!(reg("debian:12"), owned("docker.io", "library/debian", Some("12"), None));
        assert_eq!(reg("user/app"), owned("docker.io", "user/app", Some("latest"), None));
        assert_eq!(reg("docker.io/debian"), owned("docker.io", "library/debian", Some("latest"), None));
        assert_eq!(reg("index.docker.io/library/debian:x"), owned("docker.io", "library/debian", Some("x"), None));
        assert_eq!(reg("docker://debian:12"), owned("docker.io", "library/debian", Some("12"), None));
        assert_eq!(reg("a/b/c:v1.0"), owned("docker.io", "a/b/c", Some("v1.0"), None));
    }

    #[test]
    fn registries_with_ports_and_digests() {
        assert_eq!(reg("ghcr.io/org/img:v1"), owned("ghcr.io", "org/img", Some("v1"), None));
        assert_eq!(reg("localhost/img"), owned("localhost", "img", Some("latest"), None));
        assert_eq!(reg("localhost:5000/img"), owned("localhost:5000", "img", Some("latest"), None));
        assert_eq!(reg("127.0.0.1:5000/a/b:t"), owned("127.0.0.1:5000", "a/b", Some("t"), None));
        assert_eq!(reg("[::1]:5000/a:t"), owned("[::1]:5000", "a", Some("t"), None));
        assert_eq!(reg(&format!("quay.io/a/b@{D}")), owned("quay.io", "a/b", None, Some(D)));
        assert_eq!(reg(&format!("quay.io/a/b:t@{D}")), owned("quay.io", "a/b", Some("t"), Some(D)));
        assert_eq!(reg(&format!("debian@{D}")), owned("docker.io", "library/debian", None, Some(D)));
        // "host:port" without a slash is Docker Hub repository + tag, as in docker.
        assert_eq!(reg("test.com:5000"), owned("docker.io", "library/test.com", Some("5000"), None));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "docker.io/library/debian:latest",
            "127.0.0.1:5000/a/b:t",
            "[::1]:5000/a:t",
            &format!("quay.io/a/b:t@{D}"),
            &format!("quay.io/a/b@{D}"),
            "oci:/tmp/layout:v1",
            "oci:rel/dir",
        ] {
            let parsed: ImageRef = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parsed.to_string().parse::<ImageRef>().unwrap(), parsed);
        }
        assert_eq!("debian".parse::<ImageRef>().unwrap().to_string(), "docker.io/library/debian:latest");
    }

    #[test]
    fn oci_layout_forms() {
        assert_eq!("oci:/tmp/img".parse::<ImageRef>().unwrap(), ImageRef::Layout { dir: "/tmp/img".into(), tag: None });
        assert_eq!(
            "oci:./img:v2".parse::<ImageRef>().unwrap(),
            ImageRef::Layout { dir: "./img".into(), tag: Some("v2".into()) }
        );
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!("oci::tag".parse::<ImageRef>().is_err());
        assert!("oci:dir:".parse::<ImageRef>().is_err());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Debian",
            "ghcr.io/Org/img",
            "debian:",
            "debian:-x",
            "debian@sha256:abc",
            "debian@md5:0123",
            "a//b",
            "a/b/",
            "ghcr.io/",
            "host:99999999/a",
            "https://ghcr.io/a/b",
            "a b",
            "debian:tag with space",
        ] {
            let err = bad.parse::<ImageRef>().unwrap_err();
            assert!(matches!(err, SourceError::InvalidReference { .. }), "{bad:?}: {err}");
        }
        let err = "ghcr.io/Org/img".parse::<ImageRef>().unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
    }

    #[test]
    fn local_registries() {
        for local in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.3.4.5", "[::1]:5000", "[::1]"] {
            assert!(is_local_registry(local), "{local}");
        }
        for remote in ["docker.io", "10.0.0.1:5000", "ghcr.io", "[2001:db8::1]:5000", "localhost.example.com"] {
            assert!(!is_local_registry(remote), "{remote}");
        }
    }
}
