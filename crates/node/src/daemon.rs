//! The mount daemon: one long-running process that serves many mounts, asked for over a unix socket (`clip
//! daemon`; clients: `clip-mount`, `clip mount --daemon SOCKET`). A mount it serves starts without a process of
//! its own: no runtime to build, and the code that opens and serves it is in memory already (the client only
//! asks and waits).
//!
//! The protocol (one connection is one mount, one JSON line each way) and the client are `clip_client`'s;
//! this is the serving side. Only the daemon's own user and root may connect.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use clip_client::{to_line, MountRequest, Reply};
use clip_image::Location;
use clip_store::error_chain;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::{mount_until, stop_signal, MountConfig, NodeError};

/// Most bytes the daemon reads from one connection: a request is a few hundred.
const MAX_CONNECTION_BYTES: u64 = 64 << 10;

/// Serves mounts on the unix socket `socket` until SIGINT/SIGTERM, then unmounts every one (its client hears
/// [`Reply::Unmounted`]) and removes the socket.
pub async fn serve_daemon(socket: &Path) -> Result<(), NodeError> {
    let signalled = stop_signal(socket)?;
    tokio::pin!(signalled);
    let listener = bind(socket).await?;
    // A mount over a cache an earlier mount used finds it open (scanned, what was verified known).
    clip_store::share_disk_caches();
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
    let prepared = (request.archive.parse::<Location>().map_err(NodeError::from))
        .and_then(|location| Ok((location, MountConfig::for_request(&request)?)));
    let (location, config) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return send(&mut write, &Reply::Failed(error_chain(&e))).await,
    };
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
    let ended = tokio::select! {
        ended = &mut mount => ended,
        Ok(()) = mounted => {
            send(&mut write, &Reply::Mounted).await;
            let asked_to_end = tokio::select! {
                ended = &mut mount => Err(ended),
                () = client_done(&mut lines) => Ok(()),
                _ = stopping.wait_for(|&s| s) => Ok(()),
            };
            match asked_to_end {
                Err(ended) => ended,
                Ok(()) => {
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
