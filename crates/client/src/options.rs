//! A mount's settings as command-line options: the same for `clip mount` and `clip-mount`, so both take them
//! alike and send the daemon the same [`MountRequest`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::protocol::MountRequest;

#[derive(Debug, Clone, Args)]
pub struct MountOptions {
    /// Span cache directory, shared by every mount on the machine and kept across runs.
    /// Default: /var/cache/clip as root, else ~/.cache/clip (of the user the mount daemon runs as, for a mount
    /// it serves).
    #[arg(long, env = "CLIP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not use a disk cache (spans live only in memory while in use).
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Bound of the disk cache (bytes, or with K/M/G/T suffix); least recently used spans are evicted.
    #[arg(long, default_value = "10G", value_parser = parse_size, env = "CLIP_CACHE_SIZE")]
    pub cache_size: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Fetch every span in the background (at low priority) so the whole image ends up cached.
    #[arg(long)]
    pub prefetch: bool,
    /// Record the spans read, in first-read order, to this JSON file (a prefetch profile; rewritten every
    /// few seconds and at unmount). FUSE passthrough is off while recording.
    #[arg(long, value_name = "FILE")]
    pub record_profile: Option<PathBuf>,
    /// End the recording this many seconds after the mount starts (default: at unmount); reads after
    /// that are not recorded, and fully cached files go to FUSE passthrough again.
    #[arg(long, value_name = "SECS", requires = "record_profile")]
    pub record_seconds: Option<u64>,
    /// End the recording once it holds this many spans (default: no bound).
    #[arg(long, value_name = "N", requires = "record_profile")]
    pub record_spans: Option<u64>,
    /// Honour the image's setuid/setgid bits and file capabilities when programs are run from the mount
    /// (as root only). Without it the mount is `nosuid`: a local user who can reach the mountpoint cannot
    /// run the image's setuid-root binaries as root. A container does not need it: an overlay over the
    /// mount, mounted without `nosuid`, gives its programs their setuid bits (this is what `clip run` does).
    #[arg(long)]
    pub allow_setuid: bool,
    /// Right after mounting, prefetch the spans of this recorded profile in order (at low priority).
    #[arg(long, value_name = "FILE", conflicts_with = "prefetch")]
    pub profile: Option<PathBuf>,
    /// Do not prefetch the index's startup set (the entrypoint, its ELF interpreter and libraries, and the
    /// locale and interpreter files its start reads, found at index time; `clip inspect -v` lists them) as
    /// the mount starts.
    #[arg(long)]
    pub no_startup_set: bool,
    /// Seconds one read may take, registry retries included, before the reader gets EIO (fractions
    /// allowed, e.g. 2.5).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds, env = "CLIP_READ_TIMEOUT")]
    pub read_timeout: Duration,
    /// Shared content cache tier, s3://BUCKET/PREFIX: decoded spans by digest, read after a disk cache
    /// miss and before the registry, filled in the background; a tier that is down only costs a warning.
    #[arg(long, value_name = "S3_URL", env = "CLIP_S3_CONTENT_CACHE", value_parser = parse_s3_url)]
    pub content_cache: Option<String>,
    /// Use plain HTTP for the registry (localhost and 127.0.0.0/8 use it by default, like Docker).
    #[arg(long)]
    pub plain_http: bool,
    /// Path-style S3 addressing (ENDPOINT/BUCKET/KEY), as AWS_S3_FORCE_PATH_STYLE=true.
    #[arg(long)]
    pub s3_path_style: bool,
}

impl MountOptions {
    /// The mount of `archive` (a path or `s3://BUCKET/KEY`) on `mountpoint` with these settings.
    pub fn request(&self, archive: String, mountpoint: PathBuf) -> MountRequest {
        MountRequest {
            archive,
            mountpoint,
            cache_dir: self.cache_dir.clone(),
            no_cache: self.no_cache,
            cache_size: self.cache_size,
            read_timeout_ms: u64::try_from(self.read_timeout.as_millis()).unwrap_or(u64::MAX),
            plain_http: self.plain_http,
            s3_path_style: self.s3_path_style,
            allow_setuid: self.allow_setuid,
            metrics: self.metrics,
            prefetch: self.prefetch,
            record_profile: self.record_profile.clone(),
            record_seconds: self.record_seconds,
            record_spans: self.record_spans,
            profile: self.profile.clone(),
            no_startup_set: self.no_startup_set,
            content_cache: self.content_cache.clone(),
        }
    }
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

/// Parses a number of seconds, fractions allowed, more than 0 and at most a day.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds (examples: 30, 2.5)"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s:?} is out of range: give more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An `s3://` URL, checked as far as its scheme here; the process that serves the mount checks the rest.
fn parse_s3_url(s: &str) -> Result<String, String> {
    match s.strip_prefix("s3://") {
        Some(rest) if rest.contains('/') => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not an S3 location: give s3://BUCKET/PREFIX")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn seconds_parse_with_fractions_and_a_range() {
        assert_eq!(parse_seconds("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "86401", "NaN", "inf", "soon", "1e9"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_content_cache_is_an_s3_location() {
        assert!(parse_s3_url("s3://bucket/prefix").is_ok());
        for bad in ["bucket/prefix", "s3://bucket", "/tmp/cache"] {
            assert!(parse_s3_url(bad).is_err(), "{bad}");
        }
    }
}
