//! `clip snapshotter`: serve containerd's snapshots API on a unix socket until SIGINT/SIGTERM, with the
//! layers of images indexed by clip served lazily ([`layers::NodeLayers`]).

mod layers;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clip_snapshotter::{serve, Snapshots};

/// The end of `clip snapshotter --help`: containerd's configuration and examples.
pub const HELP: &str = "containerd's config.toml (restart containerd after adding it):
  [proxy_plugins.clip]
    type = \"snapshot\"
    address = \"/run/clip/snapshotter.sock\"

  # Kubernetes (CRI): use it for pods, with the labels that name each layer
  [plugins.\"io.containerd.grpc.v1.cri\".containerd]
    snapshotter = \"clip\"
    disable_snapshot_annotations = false

Examples:
  clip snapshotter --address /run/clip/snapshotter.sock --root /var/lib/clip/snapshotter --metrics 127.0.0.1:9101
  ctr-remote images rpull --snapshotter clip 127.0.0.1:5000/app:1   (lazy: layers served by clip)
  ctr images pull --snapshotter clip 127.0.0.1:5000/app:1           (every layer unpacked by containerd)
  ctr run --rm --snapshotter clip 127.0.0.1:5000/app:1 c1 /bin/app";

/// `clip snapshotter`'s arguments (here rather than in `args.rs`, which is near its size limit).
#[derive(Debug, clap::Args)]
pub struct SnapshotterArgs {
    /// The unix socket to serve on (containerd's proxy_plugins address).
    #[arg(long, value_name = "SOCKET", default_value = "/run/clip/snapshotter.sock")]
    pub address: PathBuf,
    /// Where snapshots and their metadata live (made 0700).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/clip/snapshotter")]
    pub root: PathBuf,
    /// clip's configuration file (cache, S3 index store, registries); its state_dir is replaced by --root.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9101): remote layers committed, layers
    /// left to containerd by reason, and `clip mount --metrics`' store metrics of each image's layer views.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

pub async fn run(a: SnapshotterArgs) -> anyhow::Result<()> {
    let mut config = clip_node::Config::load(a.config.as_deref()).context("loading the configuration")?;
    config.state_dir.value = a.root.clone();
    let exe = std::env::current_exe().context("finding the clip binary")?;
    let node = clip_node::Node::new(config, exe.clone());
    let remote = Arc::new(layers::NodeLayers::new(node, exe, tokio::runtime::Handle::current()));
    let mut _serving = None;
    if let Some(addr) = a.metrics {
        let layers = remote.clone();
        let scrape: clip_node::metrics::Scrape = Arc::new(move || {
            let (metrics, mounts) = (layers.metrics(), layers.mounts());
            Box::pin(async move { metrics.render(&mounts).await })
        });
        _serving = Some(clip_node::metrics::serve_scrape(addr, scrape).await.context("serving metrics")?);
        tracing::info!(%addr, "serving metrics");
    }
    let root = a.root.clone();
    let snapshots = tokio::task::spawn_blocking(move || Snapshots::open(&root, remote))
        .await?
        .context("opening the snapshotter's state")?;
    let stop = clip_node::stop_signal(&a.address)?;
    let shutdown = async move {
        stop.await;
        tracing::info!("signal received: stopping");
    };
    // The library's errors name the socket or file involved.
    serve(snapshots, &a.address, shutdown).await.context("serving containerd's snapshots API")
}
