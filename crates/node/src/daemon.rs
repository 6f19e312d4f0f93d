//! The mount daemon: one long-running process that serves many mounts, asked for over a unix socket (`clip
//! daemon`, `clip mount --daemon SOCKET`). A mount it serves starts without a process of its own: no runtime to
//! build, and the code that opens and serves it is in memory already (the client, a short-lived `clip mount`,
//! only asks and waits).
//!
//! One connection is one mount, one JSON line each way: the client sends a [`MountRequest`]; the daemon
//! answers [`Reply::Mounted`] once the mount is live, or [`Reply::Failed`]. The client then sends any line, or
//! closes the connection (it ended), to unmount; the daemon answers [`Reply::Unmounted`] with what the mount
//! fetched. A mount unmounted from outside, or by the daemon stopping, is answered the same way. Only the
//! daemon's own user and root may connect.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clip_image::{Location, S3Options};
use clip_s3::S3Url;
use clip_store::error_chain;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::{mount_until, stop_signal, MountConfig, NodeError, RecordLimits};

/// Where `clip daemon` listens unless told otherwise.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/clip/mounts.sock";

/// Most bytes the daemon reads from one connection: a request is a few hundred.
const MAX_CONNECTION_BYTES: u64 = 64 << 10;

/// One mount, as `clip mount` takes it: the settings both a mount of its own and the daemon's are made from
/// ([`MountRequest::config`]), so a setting cannot be dropped on the way. Paths are absolute: the daemon runs
/// in another directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// The archive: an absolute path or `s3://BUCKET/KEY`.
    pub archive: String,
    pub mountpoint: PathBuf,
    /// The disk cache (none: spans live only in memory) and its bound in bytes.
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    /// Milliseconds one read may take before the reader gets EIO.
    pub read_timeout_ms: u64,
    pub plain_http: bool,
    pub s3_path_style: bool,
    pub allow_setuid: bool,
    pub metrics: Option<SocketAddr>,
    pub prefetch: bool,
    pub record_profile: Option<PathBuf>,
    pub record_limits: Option<RecordLimits>,
    pub profile: Option<PathBuf>,
    pub no_startup_set: bool,
    #[serde(with = "crate::mount_spec::optional_s3_url")]
    pub content_cache: Option<S3Url>,
}

impl MountRequest {
    /// How to mount: this request's settings, the rest at their defaults. A mount asked for by hand starts,
    /// and serves its cache, while the registry is slow or down.
    pub fn config(&self) -> MountConfig {
        let mut config = MountConfig {
            metrics: self.metrics,
            prefetch: self.prefetch,
            record_profile: self.record_profile.clone(),
            record_limits: self.record_limits,
            profile: self.profile.clone(),
            no_startup_set: self.no_startup_set,
            content_cache: self.content_cache.clone(),
            ..MountConfig::default()
        };
        config.fs.suid = self.allow_setuid;
        config.open.source.plain_http = self.plain_http;
        config.open.source.connect_in_background = true;
        config.open.s3 = S3Options { path_style: self.s3_path_style };
        config.open.store.cache_dir = self.cache_dir.clone();
        config.open.store.cache_size = self.cache_size;
        config.open.store.read_timeout = Duration::from_millis(self.read_timeout_ms);
        config
    }

    /// The archive's location.
    pub fn location(&self) -> Result<Location, NodeError> {
        Ok(self.archive.parse()?)
    }

    /// The first path of this request that is not absolute (the daemon cannot tell what it was relative to).
    fn relative_path(&self) -> Option<&Path> {
        let archive = Some(Path::new(&self.archive)).filter(|_| !S3Url::is_s3(&self.archive));
        [archive, Some(self.mountpoint.as_path()), self.cache_dir.as_deref()]
            .into_iter()
            .chain([self.record_profile.as_deref(), self.profile.as_deref()])
            .flatten()
            .find(|p| !p.is_absolute())
    }
}

/// The daemon's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The mount is live.
    Mounted,
    /// The mount could not be made, or ended in an error: the error and its causes.
    Failed(String),
    /// The mount has ended: what it read and fetched ([`crate::MountSummary`]'s text).
    Unmounted(String),
}

/// Serves mounts on the unix socket `socket` until SIGINT/SIGTERM, then unmounts every one (its client hears
/// [`Reply::Unmounted`]) and removes the socket.
pub async fn serve_daemon(socket: &Path) -> Result<(), NodeError> {
    let signalled = stop_signal(socket)?;
    tokio::pin!(signalled);
    let listener = bind(socket).await?;
    info!(socket = %socket.display(), "serving mounts");
    let (stopping, stop) = watch::channel(false);
    let mut mounts = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut signalled => break,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    mounts.spawn(serve_connection(conn, stop.clone()));
                }
                Err(error) => {
                    // Out of descriptors, say: try again shortly rather than at once, again and again.
                    warn!(error = &error as &dyn std::error::Error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = mounts.join_next(), if !mounts.is_empty() => {}
        }
    }
    drop(listener);
    if let Err(error) = std::fs::remove_file(socket) {
        warn!(socket = %socket.display(), error = &error as &dyn std::error::Error, "removing the socket");
    }
    info!(mounts = mounts.len(), "stopping: unmounting every mount");
    let _ = stopping.send(true);
    while mounts.join_next().await.is_some() {}
    Ok(())
}

/// Listens on `socket`, readable and writable by this user only. A socket left by a daemon that is gone is
/// replaced; one that a daemon still serves, or a file that is not a socket, is refused.
async fn bind(socket: &Path) -> Result<UnixListener, NodeError> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(NodeError::Daemon {
                socket: socket.to_path_buf(),
                message: "the path exists and is not a socket; remove it or choose another with --socket".into(),
            });
        }
        Ok(_) if UnixStream::connect(socket).await.is_ok() => {
            return Err(NodeError::Daemon {
                socket: socket.to_path_buf(),
                message: "another daemon serves this socket; stop it first or choose another with --socket".into(),
            });
        }
        Ok(_) => std::fs::remove_file(socket).map_err(NodeError::io(socket, "removing a stale socket"))?,
        Err(_) => {}
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(NodeError::io(dir, "creating the socket's directory"))?;
    }
    let listener = UnixListener::bind(socket).map_err(NodeError::io(socket, "listening"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(NodeError::io(socket, "restricting the socket to this user"))?;
    Ok(listener)
}

/// One client's mount, from its request to its end.
async fn serve_connection(conn: UnixStream, mut stopping: watch::Receiver<bool>) {
    let me = nix::unistd::geteuid().as_raw();
    let peer = conn.peer_cred().map(|c| c.uid());
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read.take(MAX_CONNECTION_BYTES)).lines();
    match peer {
        Ok(uid) if uid == me || uid == 0 => {}
        Ok(uid) => {
            warn!(uid, "refused a client of another user");
            let why = format!("permission denied: this daemon serves its own user (uid {me}) and root, not uid {uid}");
            send(&mut write, &Reply::Failed(why)).await;
            return;
        }
        Err(error) => {
            warn!(error = &error as &dyn std::error::Error, "reading a client's credentials");
            return;
        }
    }
    let line = tokio::select! {
        line = lines.next_line() => line,
        // A daemon that stops does not wait for a client that has not asked for anything.
        _ = stopping.wait_for(|&s| s) => return,
    };
    let request = match line {
        Ok(Some(line)) => serde_json::from_str::<MountRequest>(&line),
        // The client went away before asking anything.
        Ok(None) | Err(_) => return,
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => return send(&mut write, &Reply::Failed(format!("not a mount request: {e}"))).await,
    };
    if let Some(path) = request.relative_path() {
        let why = format!("{} is not an absolute path", path.display());
        return send(&mut write, &Reply::Failed(why)).await;
    }
    let location = match request.location() {
        Ok(location) => location,
        Err(e) => return send(&mut write, &Reply::Failed(error_chain(&e))).await,
    };
    let config = request.config();
    let (ready, mounted) = oneshot::channel();
    let (unmount, unmounting) = oneshot::channel::<()>();
    let mount = mount_until(
        &location,
        &request.mountpoint,
        &config,
        move |_| {
            let _ = ready.send(());
        },
        async move {
            let _ = unmounting.await;
        },
    );
    tokio::pin!(mount);
    let early_end = tokio::select! {
        ended = &mut mount => Some(ended),
        Ok(()) = mounted => None,
    };
    let ended = match early_end {
        Some(ended) => ended,
        None => {
            send(&mut write, &Reply::Mounted).await;
            let outside_end = tokio::select! {
                ended = &mut mount => Some(ended),
                () = client_done(&mut lines) => None,
                _ = stopping.wait_for(|&s| s) => None,
            };
            match outside_end {
                Some(ended) => ended,
                None => {
                    let _ = unmount.send(());
                    mount.await
                }
            }
        }
    };
    let reply = match ended {
        Ok(summary) => Reply::Unmounted(summary.to_string()),
        Err(e) => Reply::Failed(error_chain(&e)),
    };
    send(&mut write, &reply).await;
}

/// Completes when the client asks to unmount: a line, the end of its stream, or an error reading it.
async fn client_done<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>) {
    let _ = lines.next_line().await;
}

/// Writes `reply` as one line; a client that has gone misses it.
async fn send(write: &mut OwnedWriteHalf, reply: &Reply) {
    let _ = write_line(write, reply).await;
}

/// Writes `value` as one line of JSON: a request or a reply.
async fn write_line(write: &mut OwnedWriteHalf, value: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Mounts `request` through the daemon at `socket`; calls `ready` once the mount is live, then holds it until
/// this process gets SIGINT/SIGTERM (it asks the daemon to unmount) or the mount ends there. Returns what the
/// mount fetched ([`crate::MountSummary`]'s text).
pub async fn mount_via_daemon(
    socket: &Path,
    request: &MountRequest,
    ready: impl FnOnce(&Path),
) -> Result<String, NodeError> {
    let stop = stop_signal(socket)?;
    let daemon_error = |message: String| NodeError::Daemon { socket: socket.to_path_buf(), message };
    let conn = UnixStream::connect(socket)
        .await
        .map_err(|error| NodeError::DaemonUnreachable { socket: socket.to_path_buf(), error })?;
    let (read, mut write) = conn.into_split();
    let mut replies = BufReader::new(read).lines();
    write_line(&mut write, request).await.map_err(|e| daemon_error(format!("sending the request: {e}")))?;
    match read_reply(&mut replies, socket).await? {
        Reply::Mounted => ready(&request.mountpoint),
        Reply::Failed(message) => return Err(NodeError::DaemonMount { socket: socket.to_path_buf(), message }),
        Reply::Unmounted(_) => return Err(daemon_error("it answered a mount with an unmount".into())),
    }
    let ended = tokio::select! {
        reply = read_reply(&mut replies, socket) => Some(reply?),
        () = stop => None,
    };
    let reply = match ended {
        Some(reply) => reply,
        None => {
            // The daemon takes any line, or the end of the stream, as the word to unmount.
            let _ = write.write_all(b"unmount\n").await;
            read_reply(&mut replies, socket).await?
        }
    };
    match reply {
        Reply::Unmounted(summary) => Ok(summary),
        Reply::Failed(message) => Err(NodeError::DaemonMount { socket: socket.to_path_buf(), message }),
        Reply::Mounted => Err(daemon_error("it answered twice that the mount is live".into())),
    }
}

/// The daemon's next reply.
async fn read_reply<R: AsyncRead + Unpin>(
    replies: &mut Lines<BufReader<R>>,
    socket: &Path,
) -> Result<Reply, NodeError> {
    let daemon_error = |message: String| NodeError::Daemon { socket: socket.to_path_buf(), message };
    match replies.next_line().await {
        Ok(Some(line)) => {
            serde_json::from_str(&line).map_err(|e| daemon_error(format!("not a reply of this version of clip: {e}")))
        }
        Ok(None) => Err(daemon_error("it closed the connection (did it stop?)".into())),
        Err(e) => Err(daemon_error(format!("reading its reply: {e}"))),
    }
}
