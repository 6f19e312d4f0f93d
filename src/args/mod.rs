//! Command-line arguments (clap derive). Only parsing lives here; `commands/` does the work.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};
pub use clip_client::parse_seconds;
use clip_image::Location;

mod node;
pub use node::{DaemonArgs, MountArgs, NodeArgs, ProfileCommand, PullArgs, RunArgs, ServeMountArgs};

/// clip makes container images lazy: it indexes an unmodified OCI image into a small .clip file and mounts
/// it with FUSE, fetching file contents on demand from the registry.
#[derive(Debug, Parser)]
#[command(name = "clip", version, about, long_about = None, propagate_version = true)]
pub struct Args {
    /// More log output: -v info, -vv debug, -vvv trace. Commands log warnings and errors by default;
    /// `clip mount` also logs info (it runs as a daemon, and its log is the record of what it did: mounted,
    /// layers first read, unmounted), so -v gives it debug. CLIP_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Args {
    /// The log filter of `-q`/`-v` for this command (see `verbose`), when CLIP_LOG does not set one.
    pub fn log_filter(&self) -> &'static str {
        if self.quiet {
            return "error";
        }
        let daemon = matches!(
            self.command,
            Command::Mount(_) | Command::ServeMount(_) | Command::Daemon(_) | Command::Snapshotter(_)
        );
        // fuser's own info lines ("Mounting …", "Unmounting …") repeat ours.
        match self.verbose + u8::from(daemon) {
            0 => "warn",
            1 => "info,fuser=warn",
            2 => "debug",
            _ => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Index an OCI image (registry or OCI layout) into an index-only .clip file.
    ///
    /// Every layer is streamed once; the index records the merged file tree, where each file's bytes sit
    /// in the layer blobs, and resume points (checkpoints) so any span can be fetched on its own later.
    #[command(
        after_help = "Examples:\n  clip index 127.0.0.1:5000/app:latest -o app.clip\n  clip index docker.io/library/alpine:3.20 --platform linux/arm64 -o alpine.clip\n  clip index oci:./layout:v1 -o app.clip\n  clip index 127.0.0.1:5000/app:latest -o app.clip --push"
    )]
    Index(IndexArgs),
    /// Show what a .clip file holds: kind, source, layers, spans, sizes.
    Inspect(InspectArgs),
    /// List a directory of the image (or one entry) without mounting.
    ///
    /// Names never reach the terminal raw: on a terminal they are quoted as GNU ls does ('a'$'\n''b');
    /// otherwise control characters, backslashes and bytes that are not UTF-8 are C escapes (a\nb, \033,
    /// \\, \377). --json keeps names exact.
    Ls(LsArgs),
    /// Print a file of the image, fetching only the spans it needs.
    Cat(CatArgs),
    /// Write the image's root filesystem into DIR (run as root to keep owners, devices and xattrs).
    Extract(ExtractArgs),
    /// Mount a .clip file read-only with FUSE; file contents are fetched on first read, verified and cached.
    ///
    /// Runs in the foreground until the mountpoint is unmounted (`umount DIR`, `fusermount3 -u DIR`) or
    /// clip gets SIGINT/SIGTERM, then prints what it fetched. "mounted" is logged (and the mountpoint is
    /// listed in /proc/mounts) once the filesystem is ready. The mount is read-only, `nosuid` and `nodev`
    /// (see --allow-setuid).
    #[command(
        after_help = "Examples:\n  clip mount app.clip /mnt/app &\n  clip mount app.clip /mnt/app --cache-size 20G --metrics 127.0.0.1:9100 --prefetch"
    )]
    Mount(MountArgs),
    /// Serve one shared mount of a node, as `clip mount` does, configured by the spec file the node wrote
    /// (started by `clip pull` and `clip run`, not by hand).
    #[command(hide = true)]
    ServeMount(ServeMountArgs),
    /// Serve mounts for `clip-mount` and `clip mount --daemon`: one long-running process that holds many mounts.
    ///
    /// A mount it serves starts sooner than one with a process of its own (no runtime to build, its code in
    /// memory already, the disk cache open), and every mount shares the one process. Each mount lasts as long
    /// as the client that asked for it (or until it is unmounted from outside). Runs in the foreground until
    /// SIGINT/SIGTERM, then unmounts every mount and removes the socket. Only this user and root may use it;
    /// S3 credentials, the registry's Docker config and the default cache directory are the daemon's.
    #[command(
        after_help = "Example:\n  clip daemon &\n  clip-mount app.clip /mnt/app &\n  clip mount --daemon /run/clip/mounts.sock --layers app.clip /mnt/layers &\n  CLIP_DAEMON=/tmp/mounts.sock clip-mount app.clip /mnt/app   # a daemon started with --socket /tmp/mounts.sock"
    )]
    Daemon(DaemonArgs),
    /// Pack a root filesystem directory into a data-carrying .clip file (local, or uploaded to S3).
    ///
    /// Keeps owners, full modes, xattrs, devices, FIFOs, hard links, symlinks and mtimes (run as root to
    /// read them all). File data is stored in spans with a digest each, optionally zstd-compressed.
    #[command(
        after_help = "Examples:\n  clip archive ./rootfs -o app.clip\n  clip archive ./rootfs -o app.clip --compress --span-mib 1\n  clip archive ./rootfs -o s3://images/app.clip --index-out app.clip\n\nS3: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE\nand ~/.aws/{credentials,config}; AWS_S3_FORCE_PATH_STYLE=true or --s3-path-style for path-style addressing."
    )]
    Archive(ArchiveArgs),
    /// Upload a .clip file to S3 (multipart for large files).
    #[command(after_help = "Example:\n  clip push app.clip s3://images/app.clip")]
    Push(PushArgs),
    /// Make an image ready to run: find or build its index, mount it (shared), print the rootfs path.
    #[command(
        after_help = "Example:\n  clip pull 127.0.0.1:5000/debian:bookworm\n\nRegistry credentials: $DOCKER_CONFIG/config.json (or ~/.docker/config.json, credential helpers).\nMetrics: index source, v2 -> v1 fallbacks (by reason) and time to ready are added to the Prometheus\ntextfile STATE_DIR/metrics/clip-images.prom after every pull/run (node_exporter textfile collector)."
    )]
    Pull(PullArgs),
    /// Run a command in a new container of an image (overlay over the shared mount, OCI runtime runc).
    ///
    /// Exits with the command's exit code. The container's writes are discarded when it ends.
    #[command(
        after_help = "Examples:\n  clip run 127.0.0.1:5000/debian:bookworm -- cat /etc/os-release\n  CLIP_VERSION=1 clip run 127.0.0.1:5000/debian:bookworm\n\nWith clip_version = 2 an image falls back to v1 (whole image unpacked, logged at warn) when no index can\nbe built, its registry refuses Range requests, or the v2 mount does not come up.\nRegistry credentials: $DOCKER_CONFIG/config.json (or ~/.docker/config.json, credential helpers).\nMetrics: index source, fallbacks (by reason) and time to ready are added to the Prometheus textfile\nSTATE_DIR/metrics/clip-images.prom after every pull/run (node_exporter textfile collector)."
    )]
    Run(RunArgs),
    /// Prefetch profiles: the spans a container's startup reads, recorded by `clip run --record-profile`.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Unmount shared image mounts that no running container uses, and remove the layer parts (STATE_DIR/parts)
    /// that no index of the local index store uses.
    Gc(NodeArgs),
    /// Print the effective node configuration and where each value came from (default, file, env).
    Config(NodeArgs),
    /// Serve containerd's snapshots API on a unix socket: a remote snapshotter for containerd.
    ///
    /// Runs in the foreground until SIGINT/SIGTERM, then removes the socket. Snapshots behave as with
    /// containerd's overlayfs snapshotter (layers unpacked by containerd into ROOT/snapshots); their metadata
    /// is kept in ROOT/metadata.redb, so they survive restarts.
    #[command(after_help = crate::commands::snapshotter::HELP)]
    Snapshotter(crate::commands::snapshotter::SnapshotterArgs),
}

/// How to reach archives in S3 (on top of the AWS_* environment and ~/.aws files).
#[derive(Debug, ClapArgs)]
pub struct S3Args {
    /// Path-style S3 addressing (ENDPOINT/BUCKET/KEY), as AWS_S3_FORCE_PATH_STYLE=true.
    #[arg(long)]
    pub s3_path_style: bool,
}

impl S3Args {
    pub fn options(&self) -> clip_image::S3Options {
        clip_image::S3Options { path_style: self.s3_path_style }
    }
}

#[derive(Debug, ClapArgs)]
pub struct ArchiveArgs {
    /// The root filesystem directory to pack.
    pub rootfs: PathBuf,
    /// Output: a .clip file, or s3://BUCKET/KEY.
    #[arg(short, long)]
    pub output: Location,
    /// Compress the data, every span an independent zstd frame.
    #[arg(long)]
    pub compress: bool,
    /// Uncompressed MiB per span: the unit of fetching, verifying and caching.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub span_mib: u64,
    /// Also write a local metadata-only copy here; mounting it reads file data from OUTPUT.
    #[arg(long)]
    pub index_out: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, ClapArgs)]
pub struct PushArgs {
    /// A .clip file.
    pub file: PathBuf,
    /// s3://BUCKET/KEY.
    pub url: clip_image::S3Url,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Where the image comes from and how to reach it.
#[derive(Debug, ClapArgs)]
pub struct SourceArgs {
    /// Use plain HTTP for the registry (localhost and 127.0.0.0/8 use it by default, like Docker).
    #[arg(long)]
    pub plain_http: bool,
}

#[derive(Debug, ClapArgs)]
pub struct IndexArgs {
    /// REGISTRY/REPO[:TAG|@DIGEST] (Docker Hub defaults apply) or oci:DIR[:TAG].
    pub image: String,
    /// Output .clip file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Platform to pick from a multi-platform image, OS/ARCH[/VARIANT]. Default: this machine's.
    #[arg(long)]
    pub platform: Option<String>,
    /// Uncompressed MiB between checkpoints (eight times that over documentation and translations): smaller
    /// spans fetch less per read, larger ones make a smaller index.
    #[arg(long, default_value_t = clip_indexer::DEFAULT_SPAN_SIZE >> 20)]
    pub span_mib: u64,
    /// Refuse layers that inflate to more than this many times their compressed size, beyond the first
    /// 64 MiB (a decompression bomb guard; 0: no limit).
    #[arg(long, default_value_t = 200)]
    pub max_ratio: u64,
    /// Also publish the index to the image's repository, as an OCI artifact whose subject is the image
    /// manifest (found by `clip pull` through the referrers API or the `sha256-<hex>` referrers tag).
    #[arg(long)]
    pub push: bool,
    /// Give up when indexing (resolving, reading every layer, publishing) takes longer than this many
    /// seconds (0: no limit). A stalled or trickling registry fails sooner: see the README's Reliability.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_seconds)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub parts: PartsArgs,
    /// Read every layer, even those whose part is kept (the kept parts are rewritten from what is read).
    #[arg(long)]
    pub no_reuse: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Where layer parts are kept (`clip index`, `inspect`, and the layer views of `ls`, `extract`, `mount`).
#[derive(Debug, ClapArgs)]
pub struct PartsArgs {
    /// Layer part directory: a layer whose part is here is not downloaded, and each layer read is kept here.
    /// Default: STATE_DIR/parts, /var/lib/clip/parts as root (CLIP_STATE_DIR moves it), where `clip pull` keeps
    /// them; ~/.local/state/clip/parts for other users.
    #[arg(long = "parts", value_name = "DIR", env = "CLIP_PARTS_DIR")]
    pub parts_dir: Option<PathBuf>,
}

impl PartsArgs {
    /// The part store these arguments name.
    pub fn store(&self) -> clip_image::DirParts {
        clip_image::DirParts::new(self.parts_dir.clone().unwrap_or_else(clip_node::default_parts_dir))
    }
}

#[derive(Debug, ClapArgs)]
pub struct InspectArgs {
    /// A .clip file, or s3://BUCKET/KEY.
    pub file: Location,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub parts: PartsArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, ClapArgs)]
pub struct LsArgs {
    /// A .clip file, or s3://BUCKET/KEY.
    pub file: Location,
    /// Path inside the image.
    #[arg(default_value = "/")]
    pub path: String,
    /// Long listing, as `ls -l`: mode, links, owner and group (names from the image's /etc/passwd and
    /// /etc/group when it has them, else numbers), size, modification time in UTC (`Mon DD HH:MM` within
    /// the last six months, else `Mon DD  YYYY`), name.
    #[arg(short, long)]
    pub long: bool,
    /// Machine-readable output: a JSON array of entries with every attribute and the exact name (`name`,
    /// or `name_bytes` when it is not UTF-8; the same for a symlink's `target`).
    #[arg(long, conflicts_with = "long")]
    pub json: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

/// One layer instead of the merged tree.
#[derive(Debug, ClapArgs)]
pub struct LayerArgs {
    /// Show one layer's own tree instead of the merged one, as overlayfs takes a lower directory (a whiteout
    /// is a character device 0/0, an opaque directory has trusted.overlay.opaque=y): its position (0 is the
    /// bottom layer) or its digest (sha256:HEX, or a unique prefix of the hex).
    #[arg(long, value_name = "N|DIGEST")]
    pub layer: Option<clip_image::LayerChoice>,
    #[command(flatten)]
    pub parts: PartsArgs,
}

impl LayerArgs {
    /// The view asked for, if any.
    pub fn view(&self) -> Option<clip_image::ViewChoice> {
        self.layer.clone().map(clip_image::ViewChoice::Layer)
    }
}

#[derive(Debug, ClapArgs)]
pub struct CatArgs {
    /// A .clip file, or s3://BUCKET/KEY.
    pub file: Location,
    /// Path of a regular file inside the image.
    pub path: String,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, ClapArgs)]
pub struct ExtractArgs {
    /// A .clip file, or s3://BUCKET/KEY.
    pub file: Location,
    /// Target directory; must be empty or not exist yet.
    pub dir: PathBuf,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_is_well_formed() {
        // clap's own checks (unique argument ids, valid defaults, …), which it runs only when a command is used.
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }

    #[test]
    fn config_is_an_option_of_the_node_commands_only() {
        use clap::{CommandFactory, Parser};
        for sub in super::Args::command().get_subcommands() {
            let has = sub.get_arguments().any(|a| a.get_id() == "config");
            assert_eq!(
                has,
                ["pull", "run", "gc", "config", "snapshotter"].contains(&sub.get_name()),
                "{}",
                sub.get_name()
            );
        }
        assert!(super::Args::try_parse_from(["clip", "inspect", "--config", "c.toml", "a.clip"]).is_err());
        let run = super::Args::try_parse_from(["clip", "run", "--config", "c.toml", "img", "--", "true"]).unwrap();
        let super::Command::Run(run) = run.command else { panic!("not run") };
        assert_eq!(run.node.config.as_deref(), Some(std::path::Path::new("c.toml")));
        assert_eq!(run.command, ["true"]);
    }

    #[test]
    fn one_shot_commands_log_warnings_and_mount_logs_info_by_default() {
        use clap::Parser;
        let filter = |argv: &[&str]| super::Args::try_parse_from(argv).unwrap().log_filter();
        assert_eq!(filter(&["clip", "cat", "a.clip", "/f"]), "warn");
        assert_eq!(filter(&["clip", "-v", "cat", "a.clip", "/f"]), "info,fuser=warn");
        assert_eq!(filter(&["clip", "mount", "a.clip", "/mnt"]), "info,fuser=warn");
        assert_eq!(filter(&["clip", "mount", "-v", "a.clip", "/mnt"]), "debug");
        assert_eq!(filter(&["clip", "mount", "-q", "a.clip", "/mnt"]), "error");
        assert_eq!(filter(&["clip", "-vvvv", "run", "img"]), "trace");
    }
}
