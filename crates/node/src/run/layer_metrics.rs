//! The containerd snapshotter's metrics: remote layers committed, layers left to containerd by reason
//! ([`LayerFallback`]), and the metrics of every layer-views mount (the same as `clip mount --metrics`:
//! FUSE operations and the content store, per layer), scraped from the mount's unix socket
//! ([`super::layers_metrics_socket`]) and labelled `image="sha256:…"` (the image manifest the views are
//! of). [`SnapshotterMetrics::render`] makes one Prometheus text of all of it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tracing::debug;

use crate::metrics::{render, scrape_unix, Families};
use crate::run::{falls_back, layers_metrics_socket, NodeError};

/// Why a layer was not served lazily, so containerd downloads and unpacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFallback {
    /// The Prepare names no image or layer digest (a client that sets no remote-snapshot labels).
    Unlabelled,
    /// The image's index could not be found or built (the image cannot be resolved, or indexing failed
    /// for another reason than the layers themselves).
    NoIndex,
    /// A layer clip cannot index (media type, or its bytes).
    Unindexable,
    /// The registry answers Range requests with whole blobs.
    RangeRefused,
    /// The layer views' mount did not come up.
    MountFailed,
    /// The image's index has no such layer.
    NoSuchLayer,
}

impl LayerFallback {
    /// Every reason, in label order.
    pub const ALL: [LayerFallback; 6] = [
        LayerFallback::Unlabelled,
        LayerFallback::NoIndex,
        LayerFallback::Unindexable,
        LayerFallback::RangeRefused,
        LayerFallback::MountFailed,
        LayerFallback::NoSuchLayer,
    ];

    /// The reason a failure to serve a layer lazily stands for.
    pub fn of(error: &NodeError) -> LayerFallback {
        match error {
            NodeError::RangeRefused { .. } => LayerFallback::RangeRefused,
            NodeError::MountExited { .. } | NodeError::MountTimeout { .. } => LayerFallback::MountFailed,
            NodeError::NoSuchLayer { .. } => LayerFallback::NoSuchLayer,
            e if falls_back(e) => LayerFallback::Unindexable,
            _ => LayerFallback::NoIndex,
        }
    }

    /// The metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            LayerFallback::Unlabelled => "unlabelled",
            LayerFallback::NoIndex => "no_index",
            LayerFallback::Unindexable => "unindexable",
            LayerFallback::RangeRefused => "range_refused",
            LayerFallback::MountFailed => "mount_failed",
            LayerFallback::NoSuchLayer => "no_such_layer",
        }
    }
}

/// The snapshotter's own counters.
#[derive(Debug, Default)]
pub struct SnapshotterMetrics {
    committed: AtomicU64,
    fallbacks: [AtomicU64; LayerFallback::ALL.len()],
}

impl SnapshotterMetrics {
    /// A layer was committed as a remote snapshot.
    pub fn committed(&self) {
        self.committed.fetch_add(1, Ordering::Relaxed);
    }

    /// A layer was left to containerd, for `why`.
    pub fn fell_back(&self, why: LayerFallback) {
        let i = LayerFallback::ALL.iter().position(|&r| r == why).unwrap_or(0);
        self.fallbacks[i].fetch_add(1, Ordering::Relaxed);
    }

    fn counters(&self, mounts: usize) -> Counters {
        Counters {
            committed: self.committed.load(Ordering::Relaxed),
            fallbacks: std::array::from_fn(|i| self.fallbacks[i].load(Ordering::Relaxed)),
            mounts,
        }
    }

    /// The Prometheus text of these counters and of the layer-views mounts in `mounts` (their directories,
    /// `mounts/<key>-layers`); a mount whose socket does not answer is left out (logged at debug).
    pub async fn render(&self, mounts: &[PathBuf]) -> String {
        let own = render(self.counters(mounts.len()));
        let mut texts = vec![(None, own)];
        for dir in mounts {
            let socket = layers_metrics_socket(dir);
            match scrape_unix(&socket).await {
                Ok(text) => texts.push((Some(image_of(dir)), text)),
                Err(error) => {
                    debug!(socket = %socket.display(), error = &error as &dyn std::error::Error, "layer views' metrics not scraped")
                }
            }
        }
        merge("image", &texts.iter().map(|(image, text)| (image.as_deref(), text.as_str())).collect::<Vec<_>>())
    }
}

/// `sha256:<hex>` of the mount directory `mounts/sha256-<hex>-layers`.
fn image_of(dir: &std::path::Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.strip_suffix("-layers").unwrap_or(name).replacen('-', ":", 1)
}

/// What [`SnapshotterMetrics`] counted, read for one scrape.
#[derive(Debug)]
struct Counters {
    committed: u64,
    fallbacks: [u64; LayerFallback::ALL.len()],
    mounts: usize,
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut f = Families(&mut encoder);
        f.counter(
            "clip_snapshotter_remote_layers_committed",
            "Layers committed as remote snapshots (served lazily; containerd downloads none of them).",
            self.committed,
        )?;
        f.counters_by(
            "clip_snapshotter_layer_fallbacks",
            "Layers not served lazily (containerd downloads and unpacks them), by reason.",
            "reason",
            LayerFallback::ALL.iter().zip(self.fallbacks).map(|(r, n)| (r.label().to_owned(), n)),
        )?;
        f.gauge(
            "clip_snapshotter_layer_mounts",
            "Images whose layer views are mounted for snapshots.",
            self.mounts as f64,
        )
    }
}

/// One Prometheus text of several: each family once (its `# HELP`/`# TYPE` lines from the first text that
/// has it), followed by the samples of every text, those of a text with `Some(value)` labelled
/// `label="value"`.
pub fn merge(label: &str, texts: &[(Option<&str>, &str)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> = Default::default();
    for (value, text) in texts {
        let mut current = String::new();
        for line in text.lines().filter(|l| !l.is_empty() && *l != "# EOF") {
            let header = line.strip_prefix("# ");
            if let Some(rest) = header {
                current = rest.split(' ').nth(1).unwrap_or_default().to_owned();
            }
            let family = families.entry(current.clone()).or_insert_with(|| {
                order.push(current.clone());
                Default::default()
            });
            match (header, value) {
                (Some(_), _) if family.0.iter().any(|h| h == line) => {}
                (Some(_), _) => family.0.push(line.to_owned()),
                (None, Some(value)) => family.1.push(with_label(line, label, value)),
                (None, None) => family.1.push(line.to_owned()),
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let (headers, samples) = &families[&name];
        for line in headers.iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// The sample line `line` with `label="value"` first among its labels.
fn with_label(line: &str, label: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{{label}=\"{value}\"{labels}"),
        Some(labels) => format!("{name}{{{label}=\"{value}\",{labels}"),
        None => format!("{name}{{{label}=\"{value}\"}}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_texts_keep_each_family_once_with_every_mounts_samples_labelled() {
        let own = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n# EOF\n";
        let mount = "# HELP clip_fetched_bytes Bytes.\n# TYPE clip_fetched_bytes counter\nclip_fetched_bytes_total 7\n\
                     # HELP clip_layer_fetched_bytes Per layer.\n# TYPE clip_layer_fetched_bytes counter\n\
                     clip_layer_fetched_bytes_total{layer=\"0\"} 5\n# EOF\n";
        let other = mount.replace(" 7\n", " 9\n").replace(" 5\n", " 4\n");
        let merged = merge("image", &[(None, own), (Some("sha256:aa"), mount), (Some("sha256:bb"), &other)]);
        assert_eq!(
            merged,
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
             # HELP clip_fetched_bytes Bytes.\n# TYPE clip_fetched_bytes counter\n\
             clip_fetched_bytes_total{image=\"sha256:aa\"} 7\nclip_fetched_bytes_total{image=\"sha256:bb\"} 9\n\
             # HELP clip_layer_fetched_bytes Per layer.\n# TYPE clip_layer_fetched_bytes counter\n\
             clip_layer_fetched_bytes_total{image=\"sha256:aa\",layer=\"0\"} 5\n\
             clip_layer_fetched_bytes_total{image=\"sha256:bb\",layer=\"0\"} 4\n# EOF\n"
        );
    }

    #[test]
    fn a_label_value_is_escaped_and_empty_label_sets_take_it_alone() {
        assert_eq!(with_label("m{} 1", "image", "a\"b"), "m{image=\"a\\\"b\"} 1");
    }

    #[test]
    fn a_mount_directory_names_its_image() {
        assert_eq!(image_of(std::path::Path::new("/s/mounts/sha256-ab12-layers")), "sha256:ab12");
    }

    #[test]
    fn the_snapshotters_counters_render_by_reason() {
        let m = SnapshotterMetrics::default();
        m.committed();
        m.fell_back(LayerFallback::RangeRefused);
        m.fell_back(LayerFallback::RangeRefused);
        let text = render(m.counters(1));
        assert!(text.contains("clip_snapshotter_remote_layers_committed_total 1\n"), "{text}");
        assert!(text.contains("clip_snapshotter_layer_fallbacks_total{reason=\"range_refused\"} 2\n"), "{text}");
        assert!(text.contains("clip_snapshotter_layer_fallbacks_total{reason=\"unlabelled\"} 0\n"), "{text}");
        let err = NodeError::RangeRefused { image: "i".into(), detail: "d".into() };
        assert_eq!(LayerFallback::of(&err), LayerFallback::RangeRefused);
    }
}
