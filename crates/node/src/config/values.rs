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

pub use clip_client::parse_size;
