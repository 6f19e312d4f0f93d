//! Mounting an archive in the foreground: open it with its store, mount, serve metrics, wait until it is
//! unmounted from outside or the process gets SIGINT/SIGTERM, then unmount and report what was fetched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clip_format::{DataRef, Digest};
use clip_fs::{ClipFs, MountOptions, PassthroughSource};
use clip_s3::S3Url;
use clip_store::{ContentStore, RemoteSpanCache, RemoteTier, StoreStats};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::metrics::{self, MountMetrics, Snapshot};
use crate::profile::{Profile, ProfileRecorder};
use clip_client::MountRequest;
use clip_image::{open_archive, Location, OpenOptions, S3Options};

use crate::{NodeError, RecordLimits, S3SpanCache};

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountConfig {
    pub open: OpenOptions,
    pub fs: MountOptions,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
    /// Serve the same metrics on this unix socket (to the process that manages the mount).
    pub metrics_socket: Option<PathBuf>,
    /// Fill the cache with every span in the background, at low priority.
    pub prefetch: bool,
    /// Record the spans read, in first-touch order, to this JSON file (rewritten every few seconds and at
    /// unmount). FUSE passthrough starts once the recording ends, so that every read until then is seen.
    pub record_profile: Option<PathBuf>,
    /// Right after mounting, prefetch the spans of this recorded profile in order, at low priority.
    pub profile: Option<PathBuf>,
    /// Do not prefetch the index's startup set as the mount starts (it is, by default; see
    /// [`crate::startup_spans`]).
    pub no_startup_set: bool,
    /// End the recording of `record_profile` at these limits (else it records until unmount).
    pub record_limits: Option<crate::RecordLimits>,
    /// Publish the recorded profile next to this image (`REGISTRY/REPO[:TAG]`) once the recording ends.
    pub publish_profile: Option<String>,
    /// …and to this object of the S3 index store.
    pub publish_profile_s3: Option<S3Url>,
    /// The shared content cache tier (`s3://BUCKET/PREFIX`), asked after the disk cache.
    pub content_cache: Option<S3Url>,
}

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

/// How often a recording mount rewrites its profile.
const PROFILE_SAVE_EVERY: Duration = Duration::from_secs(3);

/// What a mount did, reported when it ends.
#[derive(Debug, Clone)]
pub struct MountSummary {
    pub store: StoreStats,
    pub reads: u64,
    pub read_bytes: u64,
}

impl std::fmt::Display for MountSummary {
    /// What a mount read and fetched, and where its reads were served from, in one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.store;
        let hits = s.memory_hits + s.disk_hits + s.tier_hits;
        write!(
            f,
            "{} reads ({} bytes); fetched {} spans ({} compressed bytes); cache hits: {} memory, {} disk, {} tier ({:.0}% hit rate); {} files read ahead from the disk cache",
            self.reads,
            self.read_bytes,
            s.spans_fetched,
            s.bytes_fetched,
            s.memory_hits,
            s.disk_hits,
            s.tier_hits,
            100.0 * hits as f64 / (hits + s.spans_fetched).max(1) as f64,
            s.files_paged_in,
        )
    }
}

/// Hands fully cached files to the kernel for FUSE passthrough, once the recording (if any) has ended: until
/// then every read must reach the recorder.
struct StorePassthrough {
    store: Arc<ContentStore>,
    recording: Option<Arc<ProfileRecorder>>,
}

impl PassthroughSource for StorePassthrough {
    fn local_file(&self, data: DataRef) -> Option<std::fs::File> {
        if self.recording.as_ref().is_some_and(|r| !r.finished()) {
            return None;
        }
        self.store.cached_file(data)
    }
}

/// Saves the recorded profile and, when the config says so, publishes it next to its image (a failure to
/// publish is logged: the profile still serves this node).
async fn finish_recording(recorder: &ProfileRecorder, store: &ContentStore, config: &MountConfig) {
    let resume = recorder.find_resume_points(store).await;
    let spans = recorder.profile().spans.len();
    if let Err(error) = recorder.save() {
        warn!(error = &error as &dyn std::error::Error, "saving the profile");
        return;
    }
    info!(spans, resume, "profile recorded");
    let Some(path) = config.record_profile.as_ref().filter(|_| spans > 0) else { return };
    if let Some(image) = &config.publish_profile {
        match crate::publish_profile(image, path, &config.open.source).await {
            Ok(published) => info!(%image, artifact = %published.artifact, spans, "profile published"),
            Err(error) => warn!(%image, error = &error as &dyn std::error::Error, "publishing the profile failed"),
        }
    }
    if let Some(url) = &config.publish_profile_s3 {
        match crate::publish_profile_s3(path, url, &config.open.s3).await {
            Ok(()) => info!(profile = %url, spans, "profile published to the S3 index store"),
            Err(error) => {
                warn!(profile = %url, error = &error as &dyn std::error::Error, "publishing the profile to S3 failed")
            }
        }
    }
}

/// Mounts `archive` at `mountpoint`; calls `ready` once the mount is live, then blocks until it is unmounted
/// from outside or the process gets SIGINT/SIGTERM.
pub async fn mount_foreground(
    archive: &Location,
    mountpoint: &Path,
    config: &MountConfig,
    ready: impl FnOnce(&Path),
) -> Result<MountSummary, NodeError> {
    // Caught from before the mount appears: whoever sees it may stop it at once, and it is unmounted cleanly.
    let stop = stop_signal(mountpoint)?;
    mount_until(archive, mountpoint, config, ready, stop).await
}

/// Completes at the process's first SIGINT or SIGTERM. The handlers are installed at once, so a signal that
/// comes before the future is awaited is not lost; `what` (the mount, the socket) names them in an error.
pub fn stop_signal(what: &Path) -> Result<impl std::future::Future<Output = ()> + Send + 'static, NodeError> {
    let mut term = signal(SignalKind::terminate()).map_err(NodeError::io(what, "installing signal handlers"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(NodeError::io(what, "installing signal handlers"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Mounts `archive` at `mountpoint`; calls `ready` once the mount is live, then serves it until it is unmounted
/// from outside or `stop` completes, unmounts, and reports what was fetched.
pub async fn mount_until(
    archive: &Location,
    mountpoint: &Path,
    config: &MountConfig,
    ready: impl FnOnce(&Path),
    stop: impl std::future::Future<Output = ()>,
) -> Result<MountSummary, NodeError> {
    let profile = config.profile.as_deref().map(Profile::load).transpose()?;
    let mut open = config.open.clone();
    if let Some(url) = &config.content_cache {
        let tier = S3SpanCache::open(url, &open.s3)?;
        info!(tier = %tier.describe(), "content cache tier");
        open.store.remote = Some(RemoteTier(Arc::new(tier)));
    }
    let opened = open_archive(archive, &open).await?;
    let store = opened.store.clone();
    let mut fs = ClipFs::new(store.clone(), tokio::runtime::Handle::current());
    let recorder = config.record_profile.as_ref().map(|path| {
        let recorder = ProfileRecorder::new(Arc::clone(store.archive()), path.clone());
        Arc::new(match config.record_limits {
            Some(limits) => recorder.with_limits(limits),
            None => recorder,
        })
    });
    if let Some(recorder) = &recorder {
        fs = fs.with_read_observer(recorder.clone());
    }
    fs = fs.with_passthrough(Arc::new(StorePassthrough { store: store.clone(), recording: recorder.clone() }));
    let startup_set = crate::prefetch::mount_startup_set(store.archive(), !config.no_startup_set);
    // Over a warm disk cache the start reads the set from local disk: queued at once, before it asks.
    store.page_in(startup_set.iter().filter_map(|&ino| store.archive().node(ino).ok()?.data_ref()));
    let open_searches = Arc::new(AtomicU64::new(0));
    fs = fs.with_open_observer(Arc::new(crate::prefetch::OpenPrefetch::new(
        store.clone(),
        tokio::runtime::Handle::current(),
        startup_set.iter().copied().collect(),
        Arc::clone(&open_searches),
    )));
    let fs_stats = fs.stats();
    // Metrics are served before the mount appears, so whoever waits for the mount can scrape at once.
    let mount_metrics = {
        let (fs_stats, store) = (fs_stats.clone(), store.clone());
        let searches = Arc::clone(&open_searches);
        MountMetrics(Arc::new(move || Snapshot {
            fs: fs_stats.snapshot(),
            store: store.stats(),
            open_searches: searches.load(Ordering::Relaxed),
        }))
    };
    // Served as long as the mount is: a mount the daemon served ends without its process.
    let mut _serving = Vec::new();
    if let Some(addr) = config.metrics {
        _serving.push(metrics::serve(addr, mount_metrics.clone()).await?);
        info!(%addr, "serving metrics");
    }
    if let Some(path) = &config.metrics_socket {
        // Metrics are an extra: a socket that cannot be made does not keep the mount from serving.
        match metrics::serve_unix(path, mount_metrics).await {
            Ok(serving) => {
                _serving.push(serving);
                info!(socket = %path.display(), "serving metrics");
            }
            Err(error) => warn!(error = &error as &dyn std::error::Error, "metrics not served"),
        }
    }
    let mountpoint_buf: PathBuf = mountpoint.to_path_buf();
    let fs_opts = config.fs.clone();
    let mut handle = tokio::task::spawn_blocking(move || clip_fs::mount(fs, &mountpoint_buf, &fs_opts))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?
        .map_err(NodeError::Mount)?;
    let mut prefetch = config.prefetch.then(|| store.prefetch_all());
    let mut pieces = None;
    if prefetch.is_none() {
        let archive = store.archive();
        if let Some(p) = profile.as_ref().filter(|p| p.manifest_digest != archive.meta().manifest_digest) {
            let recorded_for =
                p.manifest_digest.as_ref().map_or_else(|| "an unnamed image".to_owned(), Digest::to_string);
            warn!(profile = %recorded_for, "the profile was recorded for another image; using the spans that exist");
        }
        let (spans, from_set) = crate::startup_spans(archive, &startup_set, profile.as_ref());
        let (spans, resumes) = crate::prefetch::startup_pieces(&store, profile.as_ref(), spans);
        if profile.is_some() {
            let (spans, pieces) = (spans.len(), resumes.len());
            info!(spans, pieces, startup_set = from_set, "prefetching the spans of the profile and the startup set");
        } else if from_set > 0 {
            info!(spans = from_set, "prefetching the startup set");
        }
        if !resumes.is_empty() {
            pieces = Some(store.load_resumes(resumes));
        }
        prefetch = (!spans.is_empty()).then(|| store.prefetch_spans(spans));
    }
    info!(%archive, mountpoint = %mountpoint.display(), "mounted");
    ready(mountpoint);

    let mut last_save = tokio::time::Instant::now();
    let mut recorded = false;
    tokio::pin!(stop);
    loop {
        if let Some(recorder) = recorder.as_ref().filter(|r| !recorded && r.finished()) {
            recorded = true;
            let (recorder, store, config) = (Arc::clone(recorder), store.clone(), config.clone());
            tokio::spawn(async move { finish_recording(&recorder, &store, &config).await });
        }
        if let Some(recorder) = recorder.as_ref().filter(|_| !recorded && last_save.elapsed() >= PROFILE_SAVE_EVERY) {
            last_save = tokio::time::Instant::now();
            if let Err(error) = recorder.save() {
                warn!(error = &error as &dyn std::error::Error, "saving the profile");
            }
        }
        tokio::select! {
            () = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if !handle.is_mounted() {
                    info!(mountpoint = %mountpoint.display(), "unmounted from outside");
                    break;
                }
            }
        }
    }
    if handle.is_mounted() {
        // A busy mount (open files) is detached lazily when the handle drops.
        if let Err(error) = handle.unmount() {
            warn!(error = &error as &dyn std::error::Error, "unmount failed; detaching lazily");
        }
    }
    if let Some(task) = prefetch {
        task.abort();
    }
    if let Some(task) = pieces {
        task.abort();
    }
    if let Some(recorder) = recorder.as_ref().filter(|_| !recorded) {
        finish_recording(recorder, &store, config).await;
    }
    let fs = fs_stats.snapshot();
    drop(handle);
    Ok(MountSummary { store: store.stats(), reads: fs.op(clip_fs::Op::Read).count, read_bytes: fs.read_bytes })
}
