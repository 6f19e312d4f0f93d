//! What a client and the mount daemon say: one [`MountRequest`] line, then [`Reply`] lines. One connection is
//! one mount: the daemon answers [`Reply::Mounted`] once the mount is live, or [`Reply::Failed`]; the client
//! sends any line, or closes the connection, to unmount; the daemon answers [`Reply::Unmounted`] with what the
//! mount fetched. A mount unmounted from outside, or by the daemon stopping, is answered the same way.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `clip daemon` listens, and `clip-mount` asks, unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/clip/mounts.sock";

/// One mount, as `clip mount` takes it: the settings both a mount of its own and the daemon's are made from
/// (`clip_node`'s `mount_config`), so a setting cannot be dropped on the way. Paths sent to the daemon are
/// absolute ([`MountRequest::absolute`]): it runs in another directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// The archive: a path or `s3://BUCKET/KEY`.
    pub archive: String,
    pub mountpoint: PathBuf,
    /// The disk cache; none: the default of the process that serves the mount (see `no_cache`).
    pub cache_dir: Option<PathBuf>,
    /// No disk cache: spans live only in memory.
    pub no_cache: bool,
    /// The disk cache's bound in bytes.
    pub cache_size: u64,
    /// Milliseconds one read may take before the reader gets EIO.
    pub read_timeout_ms: u64,
    pub plain_http: bool,
    pub s3_path_style: bool,
    pub allow_setuid: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub prefetch: bool,
    pub record_profile: Option<PathBuf>,
    /// The recording's bounds: seconds after the mount starts, and spans.
    pub record_seconds: Option<u64>,
    pub record_spans: Option<u64>,
    pub profile: Option<PathBuf>,
    pub no_startup_set: bool,
    /// The shared content cache tier, `s3://BUCKET/PREFIX`.
    pub content_cache: Option<String>,
}

impl MountRequest {
    /// Whether the archive is an S3 object rather than a path.
    pub fn archive_is_s3(&self) -> bool {
        self.archive.starts_with("s3://")
    }

    /// This request with every path absolute, resolved against this process's directory. The archive's
    /// path must be UTF-8 (it travels as a string).
    pub fn absolute(mut self) -> std::io::Result<MountRequest> {
        if !self.archive_is_s3() {
            self.archive = archive_text(std::path::absolute(&self.archive)?)?;
        }
        self.mountpoint = std::path::absolute(&self.mountpoint)?;
        for path in [&mut self.cache_dir, &mut self.record_profile, &mut self.profile].into_iter().flatten() {
            *path = std::path::absolute(&*path)?;
        }
        Ok(self)
    }

    /// The first path of this request that is not absolute (the daemon cannot tell what it was relative to).
    pub fn relative_path(&self) -> Option<&Path> {
        let archive = Some(Path::new(&self.archive)).filter(|_| !self.archive_is_s3());
        [archive, Some(self.mountpoint.as_path()), self.cache_dir.as_deref()]
            .into_iter()
            .chain([self.record_profile.as_deref(), self.profile.as_deref()])
            .flatten()
            .find(|p| !p.is_absolute())
    }
}

/// An archive's path as a request carries it: in UTF-8 (it travels as a string).
pub fn archive_text(path: PathBuf) -> std::io::Result<String> {
    path.into_os_string().into_string().map_err(|path| {
        let why = format!("{}: the mount daemon takes archive paths in UTF-8 only", path.to_string_lossy());
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
    })
}

/// The daemon's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The mount is live.
    Mounted,
    /// The mount could not be made, or ended in an error: the error and its causes.
    Failed(String),
    /// The mount has ended: what it read and fetched (`clip_node::MountSummary`'s text).
    Unmounted(String),
}

/// `value` (a request or a reply) as one line of JSON, newline included.
pub fn to_line(value: &impl Serialize) -> Vec<u8> {
    // Neither type holds a map with non-string keys or a value serde_json refuses.
    let mut line = serde_json::to_vec(value).expect("a request or a reply serializes");
    line.push(b'\n');
    line
}

/// What `clip mount` and `clip-mount` print when a mount has ended.
pub fn ended_line(mountpoint: &Path, summary: &dyn std::fmt::Display) -> String {
    format!("unmounted {}: {summary}", mountpoint.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(archive: &str) -> MountRequest {
        MountRequest {
            archive: archive.into(),
            mountpoint: "mnt".into(),
            cache_dir: Some("cache".into()),
            no_cache: false,
            cache_size: 1,
            read_timeout_ms: 1,
            plain_http: false,
            s3_path_style: false,
            allow_setuid: false,
            metrics: None,
            prefetch: false,
            record_profile: None,
            record_seconds: None,
            record_spans: None,
            profile: Some("p.json".into()),
            no_startup_set: false,
            content_cache: None,
        }
    }

    #[test]
    fn absolute_resolves_every_path_but_an_s3_archive() {
        let cwd = std::env::current_dir().unwrap();
        let local = request("app.clip");
        assert_eq!(local.relative_path(), Some(Path::new("app.clip")));
        let local = local.absolute().unwrap();
        assert_eq!(local.relative_path(), None);
        assert_eq!(Path::new(&local.archive), cwd.join("app.clip"));
        assert_eq!(local.mountpoint, cwd.join("mnt"));
        assert_eq!(local.profile.as_deref(), Some(cwd.join("p.json").as_path()));
        let s3 = request("s3://bucket/app.clip").absolute().unwrap();
        assert_eq!(s3.archive, "s3://bucket/app.clip");
        assert_eq!(s3.relative_path(), None);
    }

    #[test]
    fn a_line_is_one_json_value_and_a_newline() {
        let line = to_line(&Reply::Failed("no\nsuch file".into()));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(serde_json::from_slice::<Reply>(&line).unwrap(), Reply::Failed("no\nsuch file".into()));
    }
}
