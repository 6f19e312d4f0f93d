//! `clip snapshotter`: serve containerd's snapshots API on a unix socket until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clip_snapshotter::{serve, NoRemoteLayers, Snapshots};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::SnapshotterArgs;

pub async fn run(a: SnapshotterArgs) -> anyhow::Result<()> {
    let root = a.root.clone();
    let snapshots = tokio::task::spawn_blocking(move || Snapshots::open(&root, Arc::new(NoRemoteLayers)))
        .await?
        .with_context(|| format!("opening the snapshotter state at {}", a.root.display()))?;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: stopping");
    };
    serve(snapshots, &a.address, shutdown)
        .await
        .with_context(|| format!("serving the snapshotter at {}", a.address.display()))
}
