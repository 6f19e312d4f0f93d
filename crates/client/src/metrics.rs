//! Prometheus text exposition of a mount's counters, and a minimal HTTP endpoint serving it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use clip_fs::{FsStatsSnapshot, Op};
use clip_store::StoreStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::ClientError;

/// Everything one scrape reports.
pub struct Snapshot {
    pub fs: FsStatsSnapshot,
    pub store: StoreStats,
}

/// Renders `s` in the Prometheus text format (version 0.0.4).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let ops: Vec<_> = Op::ALL.iter().map(|&op| (op, s.fs.op(op))).collect();
    let by_op = |f: &dyn Fn(&clip_fs::OpSnapshot) -> f64| -> Vec<(String, f64)> {
        ops.iter().map(|(op, snap)| (format!("{{op=\"{}\"}}", op.name()), f(snap))).collect()
    };
    metric("clip_fuse_requests_total", "counter", "FUSE requests answered, by operation.", &by_op(&|o| o.count as f64));
    metric(
        "clip_fuse_request_seconds_total",
        "counter",
        "Time spent answering FUSE requests, by operation (divide by clip_fuse_requests_total for the mean).",
        &by_op(&|o| o.latency.as_secs_f64()),
    );
    let one = |v: u64| vec![(String::new(), v as f64)];
    metric("clip_fuse_read_bytes_total", "counter", "Bytes returned by FUSE reads.", &one(s.fs.read_bytes));
    metric("clip_fuse_read_errors_total", "counter", "FUSE reads answered with an error.", &one(s.fs.read_errors));
    metric(
        "clip_fuse_passthrough_opens_total",
        "counter",
        "Opens served by FUSE passthrough (reads never reach clip).",
        &one(s.fs.passthrough_opens),
    );
    metric("clip_fuse_erofs_total", "counter", "Write attempts refused with EROFS.", &one(s.fs.erofs));
    let st = &s.store;
    metric("clip_cache_memory_hits_total", "counter", "Span lookups served from memory.", &one(st.memory_hits));
    metric("clip_cache_disk_hits_total", "counter", "Span lookups served from the disk cache.", &one(st.disk_hits));
    metric(
        "clip_spans_fetched_total",
        "counter",
        "Spans fetched from the blob source (cache misses).",
        &one(st.spans_fetched),
    );
    metric(
        "clip_fetched_bytes_total",
        "counter",
        "Compressed bytes fetched from the blob source.",
        &one(st.bytes_fetched),
    );
    let per_layer: Vec<_> =
        st.layer_bytes_fetched.iter().enumerate().map(|(i, b)| (format!("{{layer=\"{i}\"}}"), *b as f64)).collect();
    metric("clip_layer_fetched_bytes_total", "counter", "Compressed bytes fetched, per layer.", &per_layer);
    metric("clip_fetch_errors_total", "counter", "Span fetches that failed.", &one(st.fetch_errors));
    metric(
        "clip_verify_failures_total",
        "counter",
        "Fetched spans whose bytes failed their digest (never served).",
        &one(st.verify_failures),
    );
    metric(
        "clip_cache_verify_failures_total",
        "counter",
        "Disk cache files that failed their digest (refetched).",
        &one(st.disk_verify_failures),
    );
    metric(
        "clip_tier_hits_total",
        "counter",
        "Span lookups served by the shared content cache tier.",
        &one(st.tier_hits),
    );
    metric(
        "clip_tier_misses_total",
        "counter",
        "Span lookups the shared content cache tier did not hold.",
        &one(st.tier_misses),
    );
    metric(
        "clip_tier_errors_total",
        "counter",
        "Content cache tier requests that failed or timed out (the registry was used).",
        &one(st.tier_errors),
    );
    metric(
        "clip_tier_rejected_total",
        "counter",
        "Content cache tier objects that failed their digest (ignored).",
        &one(st.tier_rejected),
    );
    metric("clip_tier_puts_total", "counter", "Spans published to the content cache tier.", &one(st.tier_puts));
    metric("clip_inflight_fetches", "gauge", "Span fetches running now.", &one(st.inflight_fetches));
    metric("clip_readahead_spans_total", "counter", "Spans requested by readahead.", &one(st.readahead_spans));
    metric(
        "clip_open_prefetch_spans_total",
        "counter",
        "Spans requested because a file covering them was opened.",
        &one(st.open_prefetch_spans),
    );
    metric("clip_prefetched_spans_total", "counter", "Spans loaded by prefetch.", &one(st.prefetched_spans));
    metric("clip_cache_evictions_total", "counter", "Disk cache files evicted.", &one(st.evictions));
    metric("clip_cache_evicted_bytes_total", "counter", "Bytes evicted from the disk cache.", &one(st.bytes_evicted));
    metric("clip_cache_bytes", "gauge", "Bytes in the disk cache.", &one(st.disk_cache_bytes));
    let mut buckets: Vec<(String, f64)> = st
        .fetch_latency
        .cumulative()
        .into_iter()
        .map(|(le, n)| {
            let le = le.map_or("+Inf".to_string(), |ms| format!("{}", ms as f64 / 1000.0));
            (format!("_bucket{{le=\"{le}\"}}"), n as f64)
        })
        .collect();
    buckets.push(("_sum".into(), st.fetch_latency.sum_micros as f64 / 1e6));
    buckets.push(("_count".into(), st.fetch_latency.count as f64));
    metric("clip_fetch_seconds", "histogram", "Latency of span fetches from the blob source.", &buckets);
    out
}

/// Serves `GET /metrics` (any path, in fact) on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>) -> Result<(), ClientError> {
    let listener =
        TcpListener::bind(addr).await.map_err(ClientError::io(addr.to_string(), "binding the metrics address"))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, peer)) = listener.accept().await else { continue };
            let snapshot = snapshot.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                // Read the request head (we answer every path the same).
                while got < buf.len() {
                    match conn.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let body = render(&snapshot());
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if let Err(error) = conn.write_all(format!("{head}{body}").as_bytes()).await {
                    warn!(%peer, %error, "metrics response failed");
                }
                debug!(%peer, "metrics scraped");
            });
        }
    });
    Ok(())
}
