//! `clip mount`: mount a .clip file in the foreground (or have the mount daemon serve it) and report what was
//! fetched when it ends; `clip serve-mount`: the same for a node's shared mount, configured by its spec;
//! `clip daemon`: the mount daemon.

use std::path::Path;

use anyhow::Context;
use clip_image::Location;
use clip_node::{mount_foreground, mount_via_daemon, MountConfig, MountRequest, MountSpec};

use crate::args::{DaemonArgs, MountArgs, ServeMountArgs};

pub async fn run(a: MountArgs, quiet: bool) -> anyhow::Result<()> {
    let mut request = MountRequest {
        archive: a.file.to_string(),
        mountpoint: a.mountpoint.clone(),
        cache_dir: if a.no_cache {
            None
        } else {
            Some(a.cache_dir.clone().unwrap_or_else(clip_store::default_cache_dir))
        },
        cache_size: a.cache_size,
        read_timeout_ms: u64::try_from(a.read_timeout.as_millis()).unwrap_or(u64::MAX),
        plain_http: a.source.plain_http,
        s3_path_style: a.s3.s3_path_style,
        allow_setuid: a.allow_setuid,
        metrics: a.metrics,
        prefetch: a.prefetch,
        record_profile: a.record_profile.clone(),
        record_limits: (a.record_seconds.is_some() || a.record_spans.is_some()).then(|| clip_node::RecordLimits {
            seconds: a.record_seconds.unwrap_or(u64::MAX),
            spans: a.record_spans.unwrap_or(usize::MAX),
        }),
        profile: a.profile.clone(),
        no_startup_set: a.no_startup_set,
        content_cache: a.content_cache.clone(),
    };
    let config = request.config();
    let view = a.layers.then_some(clip_image::ViewChoice::AllLayers);
    // The view's index lives as long as `_view`: until the mount ends, wherever it is served.
    let (file, _view) = super::viewed(&a.file, view, &a.parts, &config.open).await?;
    let Some(socket) = &a.daemon else {
        return mount_and_report(&file, &a.mountpoint, &config, quiet).await;
    };
    // The daemon runs elsewhere: every path it is given is absolute.
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    request.archive = match file {
        Location::Local(path) => absolute(&path)?.into_os_string().into_string().map_err(|path| {
            anyhow::anyhow!("{}: the mount daemon takes archive paths in UTF-8 only", path.to_string_lossy())
        })?,
        s3 => s3.to_string(),
    };
    request.mountpoint = absolute(&a.mountpoint)?;
    for path in [&mut request.cache_dir, &mut request.record_profile, &mut request.profile].into_iter().flatten() {
        *path = absolute(path)?;
    }
    let summary = mount_via_daemon(socket, &request, |mountpoint| {
        tracing::info!(mountpoint = %mountpoint.display(), daemon = %socket.display(), "mounted");
    })
    .await?;
    report(&a.mountpoint, &summary, quiet);
    Ok(())
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
        eprintln!("unmounted {}: {summary}", mountpoint.display());
    }
}
