//! The mount daemon: one long-running process that serves many mounts, asked for over a unix socket (`clip
//! daemon`; clients: `clip-mount`, `clip mount --daemon SOCKET`). A mount it serves starts without a process of
//! its own: no runtime to build, and the code that opens and serves it is in memory already (the client only
//! asks and waits).
//!
//! The protocol (one connection is one mount, one JSON line each way) and the client are `clip_client`'s;
//! this is the serving side. Only the daemon's own user and root may connect.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clip_client::{to_line, MountRequest, Reply};
use clip_image::{Location, S3Options};
use clip_s3::S3Url;
use clip_store::{error_chain, DiskCache};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::{mount_until, stop_signal, MountConfig, NodeError, RecordLimits};

/// Most bytes the daemon reads from one connection: a request is a few hundred.
const MAX_CONNECTION_BYTES: u64 = 64 << 10;

impl MountConfig {
    /// How to mount `request`: its settings, the rest at their defaults. A mount asked for by hand starts,
    /// and serves its cache, while the registry is slow or down. A request without a cache directory gets
    /// this process's default ([`clip_store::default_cache_dir`]).
    pub fn for_request(request: &MountRequest) -> Result<MountConfig, NodeError> {
        let mut config = MountConfig {
            metrics: request.metrics,
            prefetch: request.prefetch,
            record_profile: request.record_profile.clone(),
            record_limits: (request.record_seconds.is_some() || request.record_spans.is_some()).then(|| RecordLimits {
                seconds: request.record_seconds.unwrap_or(u64::MAX),
                spans: request.record_spans.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            }),
            profile: request.profile.clone(),
            no_startup_set: request.no_startup_set,
            content_cache: request.content_cache.as_deref().map(str::parse::<S3Url>).transpose()?,
            ..MountConfig::default()
        };
        config.fs.suid = request.allow_setuid;
        config.open.source.plain_http = request.plain_http;
        config.open.source.connect_in_background = true;
        config.open.s3 = S3Options { path_style: request.s3_path_style };
        config.open.store.cache_dir =
            (!request.no_cache).then(|| request.cache_dir.clone().unwrap_or_else(clip_store::default_cache_dir));
        config.open.store.cache_size = request.cache_size;
        config.open.store.read_timeout = Duration::from_millis(request.read_timeout_ms);
        Ok(config)
    }
}

/// Serves mounts on the unix socket `socket` until SIGINT/SIGTERM, then unmounts every one (its client hears
/// [`Reply::Unmounted`]) and removes the socket.
pub async fn serve_daemon(socket: &Path) -> Result<(), NodeError> {
    let signalled = stop_signal(socket)?;
    tokio::pin!(signalled);
    let listener = bind(socket).await?;
    clip_store::share_disk_caches();
    info!(socket = %socket.display(), "serving mounts");
    let (stopping, stop) = watch::channel(false);
    let caches = Caches::default();
    let mut mounts = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut signalled => break,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    mounts.spawn(serve_connection(conn, stop.clone(), caches.clone()));
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

/// The disk caches the daemon's mounts have used, kept open for its life: a mount over one of them (the
/// stores of a process share a directory's cache, [`DiskCache::shared`]) does not scan it again nor test that
/// it can write there, and trusts what earlier mounts verified.
#[derive(Clone, Default)]
struct Caches(Arc<std::sync::Mutex<Vec<Arc<DiskCache>>>>);

impl Caches {
    /// Opens, or finds open, the disk cache `config` names, and keeps it. One that cannot be opened is not
    /// kept: the mount runs without it and logs why.
    fn keep(&self, config: &MountConfig) {
        let store = &config.open.store;
        let Some(Ok(cache)) = store.cache_dir.as_ref().map(|dir| DiskCache::shared(dir, store.cache_size)) else {
            return;
        };
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !kept.iter().any(|k| Arc::ptr_eq(k, &cache)) {
            kept.push(cache);
        }
    }
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
async fn serve_connection(conn: UnixStream, mut stopping: watch::Receiver<bool>, caches: Caches) {
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
    let prepared = (request.archive.parse::<Location>().map_err(NodeError::from))
        .and_then(|location| Ok((location, MountConfig::for_request(&request)?)));
    let (location, config) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return send(&mut write, &Reply::Failed(error_chain(&e))).await,
    };
    caches.keep(&config);
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
    let _ = write.write_all(&to_line(reply)).await;
}
