//! Prometheus metrics, in one place: every metric clip exposes is written by a prometheus-client
//! [`Collector`] that reads the live counters at scrape time, through one encoder ([`render`], the
//! Prometheus text format). A mount's counters ([`MountMetrics`]: FUSE operations, the content store)
//! are served over HTTP by [`serve`] (`clip mount --metrics ADDR`), or on a unix socket by [`serve_unix`] to
//! the process that manages a node's mount ([`scrape_unix`]); the image metrics of `clip pull`/`run`
//! go to a textfile for node_exporter (`run::image_metrics`) through the same [`render`].

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use clip_fs::{FsStatsSnapshot, Op};
use clip_store::StoreStats;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

use crate::NodeError;

/// The content type of [`render`]'s output: the Prometheus text format, version 0.0.4.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE as CONTENT_TYPE_TEXT;

/// Everything one scrape of a mount reports.
pub struct Snapshot {
    pub fs: FsStatsSnapshot,
    pub store: StoreStats,
    /// Searches for what an opened program, library or module loads next that found files and ended.
    pub open_searches: u64,
}

/// The Prometheus text (version 0.0.4: what Prometheus scrapes and node_exporter's textfile collector
/// reads) of what `collector` reports now.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// Writes metric families into a [`DescriptorEncoder`]: the typed metrics of prometheus-client, read from
/// snapshots (names of counters without `_total`: the encoder adds it).
pub(crate) struct Families<'a, 'b>(pub &'a mut DescriptorEncoder<'b>);

type Fmt = Result<(), std::fmt::Error>;

impl Families<'_, '_> {
    pub(crate) fn counter(&mut self, name: &str, help: &str, value: u64) -> Fmt {
        let encoder = self.0.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(encoder)
    }

    /// One counter per `(name, help, value)`, in order.
    pub(crate) fn counters(&mut self, counters: &[(&str, &str, u64)]) -> Fmt {
        counters.iter().try_for_each(|&(name, help, value)| self.counter(name, help, value))
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: f64) -> Fmt {
        let encoder = self.0.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(encoder)
    }

    /// A counter with one label, a sample per `(label value, count)`.
    pub(crate) fn counters_by<V: prometheus_client::encoding::EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) -> Fmt {
        let mut encoder = self.0.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (value, count) in samples {
            let labels = [(label.to_owned(), value)];
            encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        Ok(())
    }

    /// A histogram from per-bucket (not cumulative) counts `(upper bound, count)`, the last bound `+Inf`.
    pub(crate) fn histogram(&mut self, name: &str, help: &str, sum: f64, count: u64, buckets: &[(f64, u64)]) -> Fmt {
        let mut encoder = self.0.encode_descriptor(name, help, None, MetricType::Histogram)?;
        encoder.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
    }
}

/// The counters of one mount, read at every scrape.
#[derive(Clone)]
pub struct MountMetrics(pub Arc<dyn Fn() -> Snapshot + Send + Sync>);

impl std::fmt::Debug for MountMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountMetrics")
    }
}

impl Collector for MountMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        let s = (self.0)();
        let mut m = Families(&mut encoder);
        let ops = || Op::ALL.iter().map(|&op| (op, s.fs.op(op)));
        m.counters_by(
            "clip_fuse_requests",
            "FUSE requests answered, by operation.",
            "op",
            ops().map(|(op, o)| (op.name().to_owned(), o.count)),
        )?;
        m.counters_by(
            "clip_fuse_request_seconds",
            "Time spent answering FUSE requests, by operation (divide by clip_fuse_requests_total for the mean).",
            "op",
            ops().map(|(op, o)| (op.name().to_owned(), o.latency.as_secs_f64())),
        )?;
        m.counters(&[
            ("clip_fuse_read_bytes", "Bytes returned by FUSE reads.", s.fs.read_bytes),
            ("clip_fuse_read_errors", "FUSE reads answered with an error.", s.fs.read_errors),
            (
                "clip_fuse_passthrough_opens",
                "Opens served by FUSE passthrough (reads never reach clip).",
                s.fs.passthrough_opens,
            ),
            ("clip_fuse_erofs", "Write attempts refused with EROFS.", s.fs.erofs),
            (
                "clip_fuse_readdirplus_names_only",
                "READDIRPLUS batches answered with names only (a walk that does not stat what it lists).",
                s.fs.names_only_batches,
            ),
        ])?;
        let st = &s.store;
        m.counters(&[
            ("clip_cache_memory_hits", "Span lookups served from memory.", st.memory_hits),
            ("clip_cache_disk_hits", "Span lookups served from the disk cache.", st.disk_hits),
            ("clip_cache_disk_lookups", "Span lookups that went to a disk cache file (hit or not).", st.disk_lookups),
            ("clip_spans_fetched", "Spans fetched from the blob source (cache misses).", st.spans_fetched),
            ("clip_fetched_bytes", "Compressed bytes fetched from the blob source.", st.bytes_fetched),
        ])?;
        m.counters_by(
            "clip_layer_fetched_bytes",
            "Compressed bytes fetched, per layer.",
            "layer",
            st.layer_bytes_fetched.iter().enumerate().map(|(i, b)| (i.to_string(), *b)),
        )?;
        m.counters(&[
            ("clip_fetch_errors", "Span fetches that failed.", st.fetch_errors),
            (
                "clip_verify_failures",
                "Fetched spans whose bytes failed their digest (never served).",
                st.verify_failures,
            ),
            (
                "clip_cache_verify_failures",
                "Disk cache files that failed their digest (refetched).",
                st.disk_verify_failures,
            ),
            ("clip_tier_hits", "Span lookups served by the shared content cache tier.", st.tier_hits),
            ("clip_tier_misses", "Span lookups the shared content cache tier did not hold.", st.tier_misses),
            (
                "clip_tier_errors",
                "Content cache tier requests that failed or timed out (the registry was used).",
                st.tier_errors,
            ),
            ("clip_tier_rejected", "Content cache tier objects that failed their digest (ignored).", st.tier_rejected),
            ("clip_tier_puts", "Spans published to the content cache tier.", st.tier_puts),
            ("clip_readahead_spans", "Spans requested by readahead.", st.readahead_spans),
            (
                "clip_open_prefetch_spans",
                "Spans requested because a file covering them was opened.",
                st.open_prefetch_spans,
            ),
            (
                "clip_open_searches",
                "Searches for what an opened program, library or module loads next that found files and ended.",
                s.open_searches,
            ),
            (
                "clip_files_paged_in",
                "Files whose cached copies were read into the page cache ahead of a start.",
                st.files_paged_in,
            ),
            ("clip_prefetched_spans", "Spans loaded by prefetch.", st.prefetched_spans),
            ("clip_pieces_loaded", "Pieces of spans loaded from a profile's resume points.", st.pieces_loaded),
            (
                "clip_pieces_rejected",
                "Resume points of a profile not used (they do not fit the index).",
                st.pieces_rejected,
            ),
            ("clip_cache_evictions", "Disk cache files evicted.", st.evictions),
            ("clip_cache_evicted_bytes", "Bytes evicted from the disk cache.", st.bytes_evicted),
        ])?;
        m.gauge(
            "clip_fuse_open_inodes",
            "Inodes with open handles now (per-inode state is released at the last close).",
            s.fs.open_inodes as f64,
        )?;
        m.gauge("clip_inflight_fetches", "Span fetches running now.", st.inflight_fetches as f64)?;
        m.gauge(
            "clip_loads_ahead",
            "Span loads started ahead of reads (readahead, an opened file and what it loads) not done yet.",
            st.loads_ahead as f64,
        )?;
        m.gauge(
            "clip_failing_spans",
            "Spans whose last fetch failed within the hold-off: their reads fail at once until it ends.",
            st.failing_spans as f64,
        )?;
        m.gauge("clip_cache_bytes", "Bytes in the disk cache.", st.disk_cache_bytes as f64)?;
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = st
            .fetch_latency
            .cumulative()
            .into_iter()
            .map(|(le, n)| {
                let per_bucket = n - below;
                below = n;
                (le.map_or(f64::INFINITY, |ms| ms as f64 / 1000.0), per_bucket)
            })
            .collect();
        m.histogram(
            "clip_fetch_seconds",
            "Latency of span fetches from the blob source.",
            st.fetch_latency.sum_micros as f64 / 1e6,
            st.fetch_latency.count,
            &buckets,
        )
    }
}

/// What one scrape answers: the Prometheus text, made when the scrape comes.
pub type Scrape = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// Serves [`render`] of `metrics` over HTTP on `addr` (every path; `GET /metrics` is what Prometheus asks)
/// until the [`Serving`] is dropped.
pub async fn serve(addr: SocketAddr, metrics: MountMetrics) -> Result<Serving, NodeError> {
    serve_scrape(addr, rendered(metrics)).await
}

/// Metrics being served: until this is dropped (a mount the daemon served ends; the daemon serves on).
#[must_use = "the metrics stop being served when this is dropped"]
pub struct Serving(tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        // Stops accepting, frees the address and what the scrape holds; a scrape under way still ends.
        self.0.abort();
    }
}

/// Serves what `scrape` makes over HTTP on `addr` (every path) until the [`Serving`] is dropped.
pub async fn serve_scrape(addr: SocketAddr, scrape: Scrape) -> Result<Serving, NodeError> {
    let listener =
        TcpListener::bind(addr).await.map_err(NodeError::io(addr.to_string(), "binding the metrics address"))?;
    Ok(Serving(tokio::spawn(async move {
        loop {
            let Ok((conn, peer)) = listener.accept().await else { continue };
            tokio::spawn(answer(conn, peer.to_string(), scrape.clone()));
        }
    })))
}

/// Serves [`render`] of `metrics` over HTTP on the unix socket `path` (made 0600 in its private directory; a
/// stale socket is replaced) until the [`Serving`] is dropped: how a node's mount process hands its counters to the
/// process that manages it (see [`scrape_unix`]).
pub async fn serve_unix(path: &Path, metrics: MountMetrics) -> Result<Serving, NodeError> {
    let failed = |what| NodeError::io(path, what);
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(failed("removing a stale socket"))?,
        _ => {}
    }
    let (short, _dir) = socket_address(path).map_err(failed("opening the metrics socket's directory"))?;
    let listener = UnixListener::bind(&short).map_err(failed("binding the metrics socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(failed("making the socket private"))?;
    let scrape = rendered(metrics);
    Ok(Serving(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            tokio::spawn(answer(conn, "unix".to_owned(), scrape.clone()));
        }
    })))
}

/// The largest scrape [`scrape_unix`] reads.
const MAX_SCRAPE_BYTES: usize = 16 << 20;

/// Scrapes the metrics served on the unix socket `path` by [`serve_unix`]: the Prometheus text.
pub async fn scrape_unix(path: &Path) -> Result<String, NodeError> {
    let failed = |e: std::io::Error| NodeError::io(path, "scraping the metrics socket")(e);
    let other = |e: hyper::Error| failed(std::io::Error::other(e));
    let (short, _dir) = socket_address(path).map_err(failed)?;
    let stream = tokio::net::UnixStream::connect(&short).await.map_err(failed)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(other)?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| failed(std::io::Error::other(e)))?;
    let response = sender.send_request(request).await.map_err(other)?;
    let body = http_body_util::Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| failed(std::io::Error::other(e.to_string())))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// An address for the unix socket `path` that fits: `path` itself, or when it is too long, the same file
/// reached through an open handle of its directory (`/proc/self/fd/N/NAME`, valid while the returned
/// handle lives).
fn socket_address(path: &Path) -> std::io::Result<(std::path::PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a socket path"));
    };
    let handle = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&handle).to_string()).join(name);
    Ok((short, Some(handle)))
}

fn rendered(metrics: MountMetrics) -> Scrape {
    Arc::new(move || {
        let metrics = metrics.clone();
        Box::pin(async move { render(metrics) })
    })
}

/// Answers the HTTP requests of one connection with what `scrape` makes.
async fn answer<IO>(conn: IO, peer: String, scrape: Scrape)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |_request| {
        let scrape = scrape.clone();
        async move {
            let body = scrape().await;
            Response::builder().header(CONTENT_TYPE, CONTENT_TYPE_TEXT).body(Full::new(Bytes::from(body)))
        }
    });
    match hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(conn), service).await {
        Ok(()) => debug!(%peer, "metrics scraped"),
        Err(error) => warn!(%peer, %error, "metrics connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_with_a_long_path_serves_and_is_scraped() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("sha256-0123456789abcdef-layers.sock");
        assert!(path.as_os_str().len() > MAX_SOCKET_PATH);
        let scrape = Arc::new(|| Snapshot {
            fs: clip_fs::FsStats::default().snapshot(),
            store: Default::default(),
            open_searches: 0,
        });
        let _serving = serve_unix(&path, MountMetrics(scrape)).await.unwrap();
        let text = scrape_unix(&path).await.unwrap();
        assert!(text.contains("clip_fetched_bytes_total 0"), "{text}");
    }
}
