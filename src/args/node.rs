//! Arguments of the commands that run on a worker node: `pull`, `run`, `profile`, `mount`, `serve-mount`,
//! `daemon`.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use clip_image::Location;

use super::{parse_seconds, PartsArgs, SourceArgs};

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
    /// Have the mount daemon listening on SOCKET serve the mount (`clip daemon`): it starts without a
    /// process of its own. This command still runs until the mount ends, and SIGINT/SIGTERM unmounts it.
    /// `clip-mount` asks the same, and starts sooner.
    #[arg(long, value_name = "SOCKET", env = "CLIP_DAEMON")]
    pub daemon: Option<PathBuf>,
    /// Serve every layer of the index as its own directory MOUNTPOINT/<n>-sha256-<hex> (n = 0 is the bottom
    /// layer) instead of the merged tree: each is the layer's own tree as overlayfs takes a lower directory,
    /// so `mount -t overlay -o lowerdir=…` over them (top layer first) gives the image. Layers whose parts
    /// are not kept (see --parts) are indexed first.
    #[arg(long)]
    pub layers: bool,
    #[command(flatten)]
    pub options: clip_client::MountOptions,
    #[command(flatten)]
    pub parts: PartsArgs,
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
    #[arg(long, value_name = "PATH", default_value = clip_client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}
