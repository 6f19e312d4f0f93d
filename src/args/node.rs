//! Arguments of the commands that run on a worker node: `pull`, `run`, `profile`, `mount`, `serve-mount`,
//! `daemon`.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use clip_image::Location;

use super::{parse_seconds, PartsArgs, S3Args, SourceArgs};

/// The worker node's configuration (pull, run, gc, config).
#[derive(Debug, ClapArgs)]
pub struct NodeArgs {
    /// Node configuration file (TOML). Default: /etc/clip/config.toml if it exists.
    #[arg(long, env = "CLIP_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct PullArgs {
    /// REGISTRY/REPO[:TAG|@DIGEST] or oci:DIR[:TAG].
    pub image: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// REGISTRY/REPO[:TAG|@DIGEST] or oci:DIR[:TAG].
    pub image: String,
    /// Record the spans the container reads, in first-read order, to this prefetch profile (written when
    /// the image's mount ends; only when this run starts the mount, not when it shares a running one).
    #[arg(long, value_name = "FILE")]
    pub record_profile: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// The command and its arguments (default: the image's Entrypoint + Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Publish a recorded profile next to the image in its registry (an OCI artifact referring to the image
    /// manifest); `clip run` on other nodes finds it and prefetches those spans on a cold start.
    #[command(after_help = "Example:
  clip run --record-profile p.json 127.0.0.1:5000/app:1 -- true
  clip profile push 127.0.0.1:5000/app:1 p.json")]
    Push {
        /// REGISTRY/REPO[:TAG|@DIGEST] (the profile goes to this repository).
        image: String,
        /// The profile JSON file.
        file: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
}

#[derive(Debug, ClapArgs)]
pub struct MountArgs {
    /// A .clip file (index-only or data-carrying), or s3://BUCKET/KEY.
    pub file: Location,
    /// An existing empty directory to mount on (a non-empty one is refused: the mount would hide what is
    /// in it).
    pub mountpoint: PathBuf,
    /// Span cache directory, shared by every mount on the machine and kept across runs.
    /// Default: /var/cache/clip as root, else ~/.cache/clip.
    #[arg(long, env = "CLIP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not use a disk cache (spans live only in memory while in use).
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Bound of the disk cache (bytes, or with K/M/G/T suffix); least recently used spans are evicted.
    #[arg(long, default_value = "10G", value_parser = clip_node::config::parse_size, env = "CLIP_CACHE_SIZE")]
    pub cache_size: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Fetch every span in the background (at low priority) so the whole image ends up cached.
    #[arg(long)]
    pub prefetch: bool,
    /// Record the spans read, in first-read order, to this JSON file (a prefetch profile; rewritten every
    /// few seconds and at unmount). FUSE passthrough is off while recording.
    #[arg(long, value_name = "FILE")]
    pub record_profile: Option<PathBuf>,
    /// End the recording this many seconds after the mount starts (default: at unmount); reads after
    /// that are not recorded, and fully cached files go to FUSE passthrough again.
    #[arg(long, value_name = "SECS", requires = "record_profile")]
    pub record_seconds: Option<u64>,
    /// End the recording once it holds this many spans (default: no bound).
    #[arg(long, value_name = "N", requires = "record_profile")]
    pub record_spans: Option<usize>,
    /// Honour the image's setuid/setgid bits and file capabilities when programs are run from the mount
    /// (as root only). Without it the mount is `nosuid`: a local user who can reach the mountpoint cannot
    /// run the image's setuid-root binaries as root. A container does not need it: an overlay over the
    /// mount, mounted without `nosuid`, gives its programs their setuid bits (this is what `clip run` does).
    #[arg(long)]
    pub allow_setuid: bool,
    /// Have the mount daemon listening on SOCKET serve the mount (`clip daemon`): it starts without a
    /// process of its own. This command still runs until the mount ends, and SIGINT/SIGTERM unmounts it.
    #[arg(long, value_name = "SOCKET", env = "CLIP_DAEMON")]
    pub daemon: Option<PathBuf>,
    /// Right after mounting, prefetch the spans of this recorded profile in order (at low priority).
    #[arg(long, value_name = "FILE", conflicts_with = "prefetch")]
    pub profile: Option<PathBuf>,
    /// Do not prefetch the index's startup set (the entrypoint, its ELF interpreter and libraries, and the
    /// locale and interpreter files its start reads, found at index time; `clip inspect -v` lists them) as
    /// the mount starts.
    #[arg(long)]
    pub no_startup_set: bool,
    /// Seconds one read may take, registry retries included, before the reader gets EIO (fractions
    /// allowed, e.g. 2.5).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds, env = "CLIP_READ_TIMEOUT")]
    pub read_timeout: std::time::Duration,
    /// Shared content cache tier, s3://BUCKET/PREFIX: decoded spans by digest, read after a disk cache
    /// miss and before the registry, filled in the background; a tier that is down only costs a warning.
    #[arg(long, value_name = "S3_URL", env = "CLIP_S3_CONTENT_CACHE")]
    pub content_cache: Option<clip_image::S3Url>,
    /// Serve every layer of the index as its own directory MOUNTPOINT/<n>-sha256-<hex> (n = 0 is the bottom
    /// layer) instead of the merged tree: each is the layer's own tree as overlayfs takes a lower directory,
    /// so `mount -t overlay -o lowerdir=…` over them (top layer first) gives the image. Layers whose parts
    /// are not kept (see --parts) are indexed first.
    #[arg(long)]
    pub layers: bool,
    #[command(flatten)]
    pub parts: PartsArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, ClapArgs)]
pub struct ServeMountArgs {
    /// The mount's spec (JSON, `clip_node::MountSpec`).
    pub spec: PathBuf,
    /// As `clip mount --read-timeout`.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds, env = "CLIP_READ_TIMEOUT")]
    pub read_timeout: std::time::Duration,
}

#[derive(Debug, ClapArgs)]
pub struct DaemonArgs {
    /// The unix socket to listen on (readable and writable by this user only).
    #[arg(long, value_name = "PATH", default_value = clip_node::DEFAULT_DAEMON_SOCKET)]
    pub socket: PathBuf,
}
