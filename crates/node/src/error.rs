//! The node crate's error type: pulling, mounting and running images.

use std::path::PathBuf;

use clip_image::ImageError;

/// Why `pull`, `run`, `gc` or a mount failed; each variant names the image, path or program concerned.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A mount failed; the error names the mountpoint.
    #[error(transparent)]
    Mount(clip_fs::FsError),
    #[error(transparent)]
    S3(#[from] clip_s3::S3Error),
    #[error("background task failed: {0}")]
    Task(String),
    #[error("{path} is not a prefetch profile: {why} (record one with `clip mount --record-profile FILE`)")]
    BadProfile { path: PathBuf, why: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("resolving {image}")]
    Resolve {
        image: String,
        #[source]
        source: Box<clip_source::SourceError>,
    },
    #[error("the mount process for {archive} exited before mounting ({status}); its log {log}:\n{tail}")]
    MountExited { archive: PathBuf, status: String, log: PathBuf, tail: String },
    #[error("{mountpoint} was not mounted within {secs} s (see {log})")]
    MountTimeout { mountpoint: PathBuf, secs: u64, log: PathBuf },
    #[error("running {program} (is it installed? apt-get install {program})")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed: {status}: {stderr}")]
    Command { program: String, args: String, status: String, stderr: String },
    #[error("{image} has no Entrypoint or Cmd: give a command (clip run IMAGE -- CMD...)")]
    NoCommand { image: String },
    #[error("user {user:?} of {image}: {message}")]
    User { image: String, user: String, message: String },
    #[error("overlay mount at {} (is the overlay module loaded? modprobe overlay)", path.display())]
    Overlay {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} cannot be an overlay layer: its path holds ',' ':' or '\\\\'; use another state_dir")]
    OverlayPath { path: PathBuf },
    #[error("layer {digest} ({media_type}) cannot be applied: {why}")]
    Layer { digest: clip_format::Digest, media_type: String, why: String },
    #[error("the registry of {image} refuses Range requests: {detail}")]
    RangeRefused { image: String, detail: String },
    #[error("{image} has no layer {digest}")]
    NoSuchLayer { image: String, digest: clip_format::Digest },
    #[error("runtime state {path} is corrupt: {message}; remove it and its mount with `clip gc`")]
    State { path: PathBuf, message: String },
    #[error("the mount daemon at {socket}: {message}")]
    Daemon { socket: PathBuf, message: String },
}

impl NodeError {
    /// An I/O error on `path` while doing `what`: the one path-naming I/O error, [`ImageError::Io`].
    pub fn io(path: impl Into<PathBuf>, what: &'static str) -> impl FnOnce(std::io::Error) -> NodeError {
        let io = ImageError::io(path, what);
        move |source| NodeError::Image(io(source))
    }
}
