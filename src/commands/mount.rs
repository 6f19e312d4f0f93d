//! `clip mount`: mount a .clip file in the foreground (or have the mount daemon serve it) and report what was
//! fetched when it ends; `clip serve-mount`: the same for a node's shared mount, configured by its spec;
//! `clip daemon`: the mount daemon.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clip_client::{DaemonMount, MountRequest};
use clip_image::Location;
use clip_node::{mount_foreground, MountConfig, MountSpec};

use crate::args::{DaemonArgs, MountArgs, ServeMountArgs};

pub async fn run(a: MountArgs, quiet: bool) -> anyhow::Result<()> {
    let mut request = a.options.request(a.file.to_string(), a.mountpoint.clone());
    let config = MountConfig::for_request(&request)?;
    let view = a.layers.then_some(clip_image::ViewChoice::AllLayers);
    // The view's index lives as long as `_view`: until the mount ends, wherever it is served.
    let (file, _view) = super::viewed(&a.file, view, &a.parts, &config.open).await?;
    let Some(socket) = a.daemon else {
        return mount_and_report(&file, &a.mountpoint, &config, quiet).await;
    };
    request.archive = match file {
        Location::Local(path) => clip_client::archive_text(path)?,
        s3 => s3.to_string(),
    };
    // The daemon runs elsewhere: every path it is given is absolute.
    let request = request.absolute().context("resolving the mount's paths")?;
    let summary = via_daemon(socket, request).await?;
    report(&a.mountpoint, &summary, quiet);
    Ok(())
}

/// Has the daemon at `socket` serve `request` until this process gets SIGINT/SIGTERM (it asks the daemon to
/// unmount) or the mount ends there; returns what the mount fetched.
async fn via_daemon(socket: PathBuf, request: MountRequest) -> anyhow::Result<String> {
    let stop = clip_node::stop_signal(&socket)?;
    let mountpoint = request.mountpoint.clone();
    let asking = socket.clone();
    let mount = tokio::task::spawn_blocking(move || DaemonMount::start(&asking, &request)).await??;
    tracing::info!(mountpoint = %mountpoint.display(), daemon = %socket.display(), "mounted");
    let mut unmounter = mount.unmounter()?;
    let mut ended = tokio::task::spawn_blocking(move || mount.wait());
    tokio::select! {
        summary = &mut ended => return Ok(summary??),
        () = stop => unmounter.unmount(),
    }
    Ok(ended.await??)
}

pub async fn daemon(a: DaemonArgs) -> anyhow::Result<()> {
    Ok(clip_node::serve_daemon(&a.socket).await?)
}

pub async fn serve(a: ServeMountArgs, quiet: bool) -> anyhow::Result<()> {
    let spec = MountSpec::load(&a.spec)?; // the error names the file
    mount_and_report(&spec.location(), &spec.mountpoint, &spec.config(a.read_timeout), quiet).await
}

async fn mount_and_report(file: &Location, mountpoint: &Path, config: &MountConfig, quiet: bool) -> anyhow::Result<()> {
    // "mounted" is logged at info (the default of `clip mount`) once the mount is live.
    let summary = mount_foreground(file, mountpoint, config, |_| {}).await?;
    report(mountpoint, &summary, quiet);
    Ok(())
}

/// What an ended mount read and fetched (`MountSummary`'s line, wherever the mount was served), unless quiet.
fn report(mountpoint: &Path, summary: &dyn std::fmt::Display, quiet: bool) {
    if !quiet {
        eprintln!("{}", clip_client::ended_line(mountpoint, summary));
    }
}
