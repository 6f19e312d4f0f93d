//! Image-level Prometheus metrics of a node: where each pulled image's index came from, the fallbacks to
//! v1 (by reason), and the time from the start of `clip pull`/`clip run` to the image's root filesystem
//! being mounted and ready.
//!
//! `pull` and `run` are short-lived processes, so these live in files rather than behind an HTTP endpoint:
//! every pull/run adds its numbers, under an exclusive `flock` of `STATE_DIR/metrics/lock`, to
//! `STATE_DIR/metrics/clip-images.json` and rewrites `STATE_DIR/metrics/clip-images.prom` (atomically:
//! temporary file + rename) in the Prometheus text format. Point node_exporter's textfile collector at
//! the directory (`--collector.textfile.directory=STATE_DIR/metrics`) to scrape them next to the mount
//! metrics each `clip mount --metrics ADDR` serves. Counters only grow (until the files are removed).
//!
//! ```text
//! clip_image_index_source_total{source="local|registry|s3|built|none"}  pulls by where the index came from
//! clip_image_fallbacks_total{reason="unindexable|range_refused|mount_failed"}  v2 → v1 fallbacks
//! clip_image_ready_seconds_bucket{le=…} / _sum / _count                   time to ready (histogram)
//! clip_image_last_ready_seconds                                           time to ready of the latest pull
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::run::{FallbackReason, IndexOrigin, NodeError};

/// File names under `STATE_DIR/metrics/`.
pub const METRICS_DIR: &str = "metrics";
pub const METRICS_FILE: &str = "clip-images.prom";
const STATE_FILE: &str = "clip-images.json";

/// Upper bounds (seconds) of the time-to-ready histogram buckets; a last `+Inf` bucket follows.
const READY_BOUNDS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// One image made ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageReady {
    pub origin: IndexOrigin,
    pub fallback: Option<FallbackReason>,
    pub ready: Duration,
}

/// What the files hold: every pull/run since they were created.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Counters {
    index_source: BTreeMap<String, u64>,
    fallbacks: BTreeMap<String, u64>,
    /// Per bucket (not cumulative), `READY_BOUNDS.len() + 1` long.
    ready_buckets: Vec<u64>,
    ready_sum: f64,
    ready_count: u64,
    last_ready: f64,
}

impl Counters {
    fn add(&mut self, event: &ImageReady) {
        *self.index_source.entry(event.origin.label().to_owned()).or_default() += 1;
        if let Some(reason) = event.fallback {
            *self.fallbacks.entry(reason.label().to_owned()).or_default() += 1;
        }
        self.ready_buckets.resize(READY_BOUNDS.len() + 1, 0);
        let secs = event.ready.as_secs_f64();
        let bucket = READY_BOUNDS.iter().position(|b| secs <= *b).unwrap_or(READY_BOUNDS.len());
        self.ready_buckets[bucket] += 1;
        self.ready_sum += secs;
        self.ready_count += 1;
        self.last_ready = secs;
    }

    /// The Prometheus text of these counters ([`crate::metrics::render`]). Every label value is listed,
    /// zeros included, so a dashboard sees the series before the first event.
    fn render(&self) -> String {
        crate::metrics::render(self.clone())
    }
}

impl prometheus_client::collector::Collector for Counters {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = crate::metrics::Families(&mut encoder);
        let count = |map: &BTreeMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
        m.counters_by(
            "clip_image_index_source",
            "Images made ready by clip pull/run, by where their index came from (none: v1 fallback without one).",
            "source",
            IndexOrigin::LABELS.iter().map(|s| (s.to_string(), count(&self.index_source, s))),
        )?;
        m.counters_by(
            "clip_image_fallbacks",
            "Images that fell back from clip v2 to v1, by reason.",
            "reason",
            FallbackReason::LABELS.iter().map(|r| (r.to_string(), count(&self.fallbacks, r))),
        )?;
        let buckets: Vec<(f64, u64)> = READY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, bound)| (bound, self.ready_buckets.get(i).copied().unwrap_or(0)))
            .collect();
        m.histogram(
            "clip_image_ready_seconds",
            "Seconds from the start of clip pull/run to the image's root filesystem being mounted.",
            self.ready_sum,
            self.ready_count,
            &buckets,
        )?;
        m.gauge(
            "clip_image_last_ready_seconds",
            "Time to ready of the latest clip pull/run, in seconds.",
            self.last_ready,
        )
    }
}

/// Adds `event` to the node's image metrics under `state_dir` and rewrites the textfile.
pub(crate) fn record(state_dir: &Path, event: &ImageReady) -> Result<PathBuf, NodeError> {
    let dir = state_dir.join(METRICS_DIR);
    std::fs::create_dir_all(&dir).map_err(NodeError::io(&dir, "creating the metrics directory"))?;
    let _lock = crate::run::mounts::lock_exclusive(&dir.join("lock"))?;
    let state_path = dir.join(STATE_FILE);
    let mut counters: Counters = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            // Counters restart rather than block every pull on a damaged file.
            tracing::warn!(path = %state_path.display(), error = &error as &dyn std::error::Error, "unreadable image metrics; starting them afresh");
            Counters::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Counters::default(),
        Err(e) => return Err(NodeError::io(&state_path, "reading")(e)),
    };
    counters.add(event);
    let json = serde_json::to_vec(&counters)
        .map_err(|e| NodeError::State { path: state_path.clone(), message: e.to_string() })?;
    write_atomically(&state_path, &json)?;
    let prom = dir.join(METRICS_FILE);
    write_atomically(&prom, counters.render().as_bytes())?;
    debug!(path = %prom.display(), "image metrics written");
    Ok(prom)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    Ok(clip_image::write_atomically(path, |f| f.write_all(bytes).map_err(clip_image::ImageError::io(path, "writing")))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).unwrap_or_else(|| panic!("{series}"))
    }

    #[test]
    fn events_add_up_across_writers_and_render() {
        let dir = tempfile::tempdir().unwrap();
        let ev = |origin, fallback, ms| ImageReady { origin, fallback, ready: Duration::from_millis(ms) };
        record(dir.path(), &ev(IndexOrigin::Built, None, 3_000)).unwrap();
        record(dir.path(), &ev(IndexOrigin::Local, None, 200)).unwrap();
        record(dir.path(), &ev(IndexOrigin::Local, Some(FallbackReason::RangeRefused), 700)).unwrap();
        let prom = record(dir.path(), &ev(IndexOrigin::Fallback, Some(FallbackReason::Unindexable), 400_000)).unwrap();
        let text = std::fs::read_to_string(prom).unwrap();
        assert_eq!(sample(&text, "clip_image_index_source_total{source=\"local\"}"), "2");
        assert_eq!(sample(&text, "clip_image_index_source_total{source=\"built\"}"), "1");
        assert_eq!(sample(&text, "clip_image_index_source_total{source=\"registry\"}"), "0");
        assert_eq!(sample(&text, "clip_image_index_source_total{source=\"none\"}"), "1");
        assert_eq!(sample(&text, "clip_image_fallbacks_total{reason=\"range_refused\"}"), "1");
        assert_eq!(sample(&text, "clip_image_fallbacks_total{reason=\"mount_failed\"}"), "0");
        assert_eq!(sample(&text, "clip_image_ready_seconds_bucket{le=\"0.25\"}"), "1");
        assert_eq!(sample(&text, "clip_image_ready_seconds_bucket{le=\"1\"}"), "2");
        assert_eq!(sample(&text, "clip_image_ready_seconds_bucket{le=\"5\"}"), "3");
        assert_eq!(sample(&text, "clip_image_ready_seconds_bucket{le=\"300\"}"), "3");
        assert_eq!(sample(&text, "clip_image_ready_seconds_bucket{le=\"+Inf\"}"), "4");
        assert_eq!(sample(&text, "clip_image_ready_seconds_count"), "4");
        let sum: f64 = sample(&text, "clip_image_ready_seconds_sum").parse().unwrap();
        assert!((sum - 403.9).abs() < 1e-9, "{sum}");
        assert_eq!(sample(&text, "clip_image_last_ready_seconds").parse::<f64>().unwrap(), 400.0);
        assert!(text.contains("# TYPE clip_image_ready_seconds histogram"), "{text}");
    }

    #[test]
    fn a_damaged_state_file_restarts_the_counters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(METRICS_DIR)).unwrap();
        std::fs::write(dir.path().join(METRICS_DIR).join(STATE_FILE), b"{not json").unwrap();
        let ev = ImageReady { origin: IndexOrigin::S3, fallback: None, ready: Duration::from_secs(1) };
        let text = std::fs::read_to_string(record(dir.path(), &ev).unwrap()).unwrap();
        assert_eq!(sample(&text, "clip_image_index_source_total{source=\"s3\"}"), "1");
        assert_eq!(sample(&text, "clip_image_ready_seconds_count"), "1");
    }
}
