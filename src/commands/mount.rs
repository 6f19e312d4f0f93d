//! `clip mount`: mount a .clip file in the foreground and report what was fetched when it ends; `clip
//! serve-mount`: the same for a node's shared mount, configured by its spec.

use std::path::Path;

use clip_image::Location;
use clip_node::{mount_foreground, MountConfig, MountSpec};

use crate::args::{MountArgs, ServeMountArgs};

pub async fn run(a: MountArgs, quiet: bool) -> anyhow::Result<()> {
    let mut config = MountConfig {
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
        ..Default::default()
    };
    config.fs.suid = a.allow_setuid;
    config.open.source.plain_http = a.source.plain_http;
    // A foreground mount starts, and serves its cache, while the registry is slow or down (a node's shared
    // mount, `serve`, checks the registry first: a run falls back to v1 when it cannot be reached).
    config.open.source.connect_in_background = true;
    config.open.s3 = a.s3.options();
    config.open.store.cache_dir =
        if a.no_cache { None } else { Some(a.cache_dir.clone().unwrap_or_else(clip_store::default_cache_dir)) };
    config.open.store.cache_size = a.cache_size;
    config.open.store.read_timeout = a.read_timeout;
    let view = a.layers.then_some(clip_image::ViewChoice::AllLayers);
    let (file, _view) = super::viewed(&a.file, view, &a.parts, &config.open).await?;
    mount_and_report(&file, &a.mountpoint, &config, quiet).await
}

pub async fn serve(a: ServeMountArgs, quiet: bool) -> anyhow::Result<()> {
    let spec = MountSpec::load(&a.spec)?; // the error names the file
    mount_and_report(&spec.location(), &spec.mountpoint, &spec.config(a.read_timeout), quiet).await
}

async fn mount_and_report(file: &Location, mountpoint: &Path, config: &MountConfig, quiet: bool) -> anyhow::Result<()> {
    // "mounted" is logged at info (the default of `clip mount`) once the mount is live.
    let summary = mount_foreground(file, mountpoint, config, |_| {}).await?;
    if !quiet {
        let s = summary.store;
        eprintln!(
            "unmounted {}: {} reads ({} bytes); fetched {} spans ({} compressed bytes); cache hits: {} memory, {} disk, {} tier ({:.0}% hit rate); {} files read ahead from the disk cache",
            mountpoint.display(),
            summary.reads,
            summary.read_bytes,
            s.spans_fetched,
            s.bytes_fetched,
            s.memory_hits,
            s.disk_hits,
            s.tier_hits,
            100.0 * (s.memory_hits + s.disk_hits + s.tier_hits) as f64
                / (s.memory_hits + s.disk_hits + s.tier_hits + s.spans_fetched).max(1) as f64,
            s.files_paged_in,
        );
    }
    Ok(())
}
