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
    metric(
        "clip_verify_failures_total",
        "counter",
        "Spans whose bytes failed their digest (never served).",
        &one(st.verify_failures),
    );
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
