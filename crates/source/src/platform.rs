//! [`Platform`]: the OS/architecture/variant triple used to pick a manifest from an image index.

use std::fmt;
use std::str::FromStr;

use crate::error::SourceError;

/// A platform as image indexes name them (Go's GOOS/GOARCH plus an optional CPU variant).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8` for arm64, `v7` for arm; `None` matches any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform { os: os.to_owned(), architecture: architecture.to_owned(), variant: variant.map(str::to_owned) }
    }

    /// The platform of the machine we run on, in OCI terms. The OS is always `linux`: clip runs
    /// Linux containers.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            other => (other, None),
        };
        Platform::new("linux", architecture, variant)
    }

    /// Whether an index entry for `candidate` satisfies this (requested) platform: same OS and
    /// architecture, and the same variant when one was requested. For arm64 a missing variant
    /// means `v8`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(wanted) => {
                let normalize = |v: Option<&str>| match (self.architecture.as_str(), v) {
                    ("arm64", None) => Some("v8".to_owned()),
                    (_, v) => v.map(str::to_owned),
                };
                normalize(Some(wanted)) == normalize(candidate.variant.as_deref())
            }
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::host()
    }
}

impl FromStr for Platform {
    type Err = SourceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid =
            |reason: &str| SourceError::InvalidPlatform { input: input.to_owned(), reason: reason.to_owned() };
        let parts: Vec<&str> = input.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(invalid("need two or three '/'-separated parts"));
        }
        let ok = |p: &str| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        };
        if let Some(bad) = parts.iter().find(|p| !ok(p)) {
            return Err(invalid(&format!("part {bad:?} must be non-empty lowercase letters, digits, '_' or '.'")));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let p: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(p, Platform::new("linux", "amd64", None));
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p, Platform::new("linux", "arm64", Some("v8")));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        for bad in ["", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "Linux/amd64", "linux amd64"] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert!(matches!(err, SourceError::InvalidPlatform { .. }), "{bad}");
        }
    }

    #[test]
    fn host_is_linux_with_go_arch_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty());
        assert_ne!(host.architecture, "x86_64");
        assert_ne!(host.architecture, "aarch64");
        assert_eq!(host.to_string().parse::<Platform>().unwrap(), host);
    }

    #[test]
    fn matching_rules() {
        let amd64 = Platform::new("linux", "amd64", None);
        assert!(amd64.matches(&Platform::new("linux", "amd64", None)));
        assert!(amd64.matches(&Platform::new("linux", "amd64", Some("v3"))));
        assert!(!amd64.matches(&Platform::new("linux", "arm64", None)));
        assert!(!amd64.matches(&Platform::new("windows", "amd64", None)));
        let arm64v8 = Platform::new("linux", "arm64", Some("v8"));
        assert!(arm64v8.matches(&Platform::new("linux", "arm64", None)));
        assert!(arm64v8.matches(&Platform::new("linux", "arm64", Some("v8"))));
        let armv7 = Platform::new("linux", "arm", Some("v7"));
        assert!(!armv7.matches(&Platform::new("linux", "arm", Some("v6"))));
        assert!(!armv7.matches(&Platform::new("linux", "arm", None)));
    }
}
