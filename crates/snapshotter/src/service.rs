//! The gRPC front: containerd's snapshots service (via `containerd-snapshots`) on a unix socket, each call
//! run on a blocking thread against [`Snapshots`].

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::transport::Server;
use containerd_snapshots::{Info, Usage};
use futures::stream::{self, Iter};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::error::Error;
use crate::snapshots::Snapshots;

/// [`Snapshots`] as a `containerd_snapshots::Snapshotter`.
struct Service {
    snapshots: Arc<Snapshots>,
}

impl Service {
    async fn call<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Snapshots) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let snapshots = self.snapshots.clone();
        let result = tokio::task::spawn_blocking(move || f(&snapshots)).await.map_err(Error::Task)?;
        if let Err(e) = &result {
            // NotFound and AlreadyExists are containerd's everyday questions, not failures.
            use containerd_snapshots::tonic::Code;
            if !matches!(e.code(), Code::NotFound | Code::AlreadyExists) {
                warn!(op, error = %clip_store::error_chain(e), "snapshot operation failed");
            }
        }
        result
    }
}

#[containerd_snapshots::tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Error;
    type InfoStream = Iter<std::vec::IntoIter<Result<Info, Error>>>;

    async fn stat(&self, key: String) -> Result<Info, Error> {
        self.call("stat", move |s| s.stat(&key)).await
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Error> {
        self.call("update", move |s| s.update(&info.name, info.labels, &fieldpaths.unwrap_or_default())).await
    }

    async fn usage(&self, key: String) -> Result<Usage, Error> {
        self.call("usage", move |s| s.usage(&key)).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Error> {
        self.call("mounts", move |s| s.mounts(&key)).await
    }

    async fn prepare(&self, key: String, parent: String, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        self.call("prepare", move |s| s.prepare(&key, &parent, labels)).await
    }

    async fn view(&self, key: String, parent: String, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        self.call("view", move |s| s.view(&key, &parent, labels)).await
    }

    async fn commit(&self, name: String, key: String, labels: HashMap<String, String>) -> Result<(), Error> {
        self.call("commit", move |s| s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> Result<(), Error> {
        self.call("remove", move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Error> {
        self.call("cleanup", |s| s.cleanup()).await
    }

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream, Error> {
        let infos = self.call("walk", move |s| s.walk(&filters)).await?;
        Ok(stream::iter(infos.into_iter().map(Ok).collect::<Vec<_>>()))
    }
}

/// Serves `snapshots` as containerd's snapshots API on the unix socket `socket` (created 0600; a stale
/// socket file left by a killed snapshotter is replaced) until `shutdown` completes, then removes the
/// socket.
pub async fn serve(snapshots: Snapshots, socket: &Path, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(socket).map_err(Error::io(socket))?,
        Ok(_) => {
            return Err(Error::io(socket)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket (choose another --address)",
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket).map_err(Error::io(socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(Error::io(socket))?;
    info!(socket = %socket.display(), root = %snapshots.root().display(), "serving containerd's snapshots API");
    let service = Service { snapshots: Arc::new(snapshots) };
    let served = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(service)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let removed = std::fs::remove_file(socket);
    served.map_err(|source| Error::Serve { path: socket.to_path_buf(), source })?;
    removed.map_err(Error::io(socket))?;
    info!(socket = %socket.display(), "stopped");
    Ok(())
}
