//! Parsing and showing single configuration values: sizes, the clip version, S3 URLs, mirror URLs
//! without their user information.

use clip_s3::S3Url;

use super::{ClipVersion, ConfigError, Origin};

/// `scheme://user:pass@host/...` → `scheme://***@host/...`.
pub(super) fn redact_userinfo(s: &str) -> String {
    let (scheme, rest) = s.split_once("://").map(|(a, b)| (Some(a), b)).unwrap_or((None, s));
    let host_end = rest.find('/').unwrap_or(rest.len());
    let redacted = match rest[..host_end].rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{redacted}"),
        None => redacted,
    }
}

pub(super) fn parse_version(v: &str, origin: Origin) -> Result<ClipVersion, ConfigError> {
    match v.trim() {
        "1" => Ok(ClipVersion::V1),
        "2" => Ok(ClipVersion::V2),
        _ => Err(ConfigError::Value {
            key: "clip_version",
            value: v.to_owned(),
            origin,
            message: "must be 1 (data-carrying archive of the unpacked image) or 2 (lazy index)".into(),
        }),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`), as an environment variable gives a switch.
pub(super) fn parse_bool(key: &'static str, v: &str, origin: Origin) -> Result<bool, ConfigError> {
    match v.trim() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::Value { key, value: v.to_owned(), origin, message: "expected true or false".into() }),
    }
}

pub(super) fn parse_s3(key: &'static str, v: &str, origin: Origin) -> Result<S3Url, ConfigError> {
    let value = || v.to_owned();
    if !S3Url::is_s3(v) {
        return Err(ConfigError::Value { key, value: value(), origin, message: "expected s3://BUCKET/PREFIX".into() });
    }
    v.parse().map_err(|e: clip_s3::S3Error| ConfigError::Value { key, value: value(), origin, message: e.to_string() })
}

/// Parses `123`, `64K`, `512M`, `10G`, `1T` (powers of 1024; an optional trailing `B` or `iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (examples: 512M, 10G)"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}
