//! `clip mount`: mount a .clip file in the foreground and report what was fetched when it ends.

use clip_client::{mount_foreground, MountConfig};

use crate::args::MountArgs;

pub async fn run(a: MountArgs, quiet: bool) -> anyhow::Result<()> {
    let mut config = MountConfig {
        metrics: a.metrics,
        prefetch: a.prefetch,
        record_profile: a.record_profile.clone(),
        profile: a.profile.clone(),
        content_cache: a.content_cache.clone(),
        ..Default::default()
    };
    config.fs.suid = a.allow_setuid;
    config.open.source.plain_http = a.source.plain_http;
    config.open.s3 = a.s3.options();
    config.open.store.cache_dir =
        if a.no_cache { None } else { Some(a.cache_dir.clone().unwrap_or_else(clip_store::default_cache_dir)) };
    config.open.store.cache_size = a.cache_size;
    config.open.store.read_timeout = a.read_timeout;
    // "mounted" is logged at info (the default of `clip mount`) once the mount is live.
    let summary = mount_foreground(&a.file, &a.mountpoint, &config, |_| {}).await?;
    if !quiet {
        let s = summary.store;
        eprintln!(
            "unmounted {}: {} reads ({} bytes); fetched {} spans ({} compressed bytes); cache hits: {} memory, {} disk, {} tier ({:.0}% hit rate)",
            a.mountpoint.display(),
            summary.reads,
            summary.read_bytes,
            s.spans_fetched,
            s.bytes_fetched,
            s.memory_hits,
            s.disk_hits,
            s.tier_hits,
            100.0 * (s.memory_hits + s.disk_hits + s.tier_hits) as f64
                / (s.memory_hits + s.disk_hits + s.tier_hits + s.spans_fetched).max(1) as f64,
        );
    }
    Ok(())
}
