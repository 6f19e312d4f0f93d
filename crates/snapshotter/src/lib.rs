//! `clip-snapshotter`: a containerd remote snapshotter. It serves containerd's snapshots API (a
//! `[proxy_plugins.NAME] type = "snapshot"` plugin) on a unix socket, with the semantics of containerd's
//! overlayfs snapshotter, and lets image layers be served lazily instead of downloaded.
//!
//! Main types:
//! - [`Snapshots`] — the snapshots under a root directory: Prepare / View / Commit / Mounts / Remove /
//!   Stat / Update / Usage / Walk / Cleanup. Directories `ROOT/snapshots/<id>/{fs,work}`; mounts are a
//!   bind mount for a snapshot without parents, else overlayfs (`lowerdir` = the parents, nearest first,
//!   plus `upperdir`/`workdir` for an active snapshot). Metadata (kind, parent, labels, timestamps, usage)
//!   lives in `ROOT/metadata.redb`, an embedded transactional database, so it survives restarts.
//! - [`RemoteLayers`] — the seam for lazy layers: asked on every Prepare that names a layer
//!   ([`LayerRequest`]: `containerd.io/snapshot.ref` and the `containerd.io/snapshot/cri.*` labels); a
//!   directory it returns becomes a committed remote snapshot and containerd is told `AlreadyExists`, so
//!   it never downloads the layer. [`NoRemoteLayers`] declines every layer: containerd unpacks them all.
//! - [`serve`] — the gRPC service on a unix socket until a shutdown future completes.
//! - [`Error`] — every failure, mapped to the gRPC code containerd expects (`NotFound`, `AlreadyExists`,
//!   `FailedPrecondition`, …).
//!
//! ```no_run
//! # async fn demo() -> Result<(), clip_snapshotter::Error> {
//! use std::sync::Arc;
//! use clip_snapshotter::{serve, NoRemoteLayers, Snapshots};
//!
//! let snapshots = Snapshots::open("/var/lib/clip/snapshotter".as_ref(), Arc::new(NoRemoteLayers))?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! serve(snapshots, "/run/clip/snapshotter.sock".as_ref(), shutdown).await
//! # }
//! ```
//!
//! This crate knows no registry and no FUSE: serving a layer lazily is the business of a
//! [`RemoteLayers`] implementation.

mod error;
mod filter;
mod meta;
mod mounts;
mod remote;
mod service;
mod snapshots;

pub use containerd_snapshots::api::types::Mount;
pub use containerd_snapshots::{Info, Kind, Usage};
pub use error::Error;
pub use remote::{
    LayerRequest, NoRemoteLayers, RemoteLayers, LABEL_IMAGE_REF, LABEL_LAYER_DIGEST, LABEL_MANIFEST_DIGEST,
    LABEL_REMOTE, LABEL_STARGZ_DIGEST, LABEL_STARGZ_REF, LABEL_TARGET,
};
pub use service::serve;
pub use snapshots::Snapshots;
