//! `clip-mount`: the mount daemon's small client. It asks the daemon (`clip daemon`) for a mount, as
//! `clip mount --daemon` does, and holds it until SIGINT/SIGTERM or its end there, linked with `clip_client`
//! alone: under a megabyte to page in where all of clip is twelve, so a mount over a dropped page cache is up
//! milliseconds sooner.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clip_client::{block_stop_signals, ended_line, DaemonMount, MountOptions, DEFAULT_SOCKET};

/// Mount a .clip file through the clip mount daemon (`clip daemon`), as `clip mount --daemon` does, from a
/// client a tenth of clip's size.
///
/// Runs until the mountpoint is unmounted (`umount DIR`), the daemon stops, or this command gets SIGINT or
/// SIGTERM (it asks the daemon to unmount), then prints what the mount fetched. A mount of each layer
/// (`clip mount --layers`) needs clip itself.
#[derive(Debug, Parser)]
#[command(
    name = "clip-mount",
    version,
    after_help = "Examples:\n  clip daemon &\n  clip-mount app.clip /mnt/app &\n  clip-mount --daemon /run/clip/mounts.sock app.clip /mnt/app --cache-size 20G --prefetch"
)]
struct Args {
    /// A .clip file (index-only or data-carrying), or s3://BUCKET/KEY.
    file: String,
    /// An existing empty directory to mount on.
    mountpoint: PathBuf,
    /// The mount daemon's socket (`clip daemon --socket`).
    #[arg(long, value_name = "SOCKET", env = "CLIP_DAEMON", default_value = DEFAULT_SOCKET)]
    daemon: PathBuf,
    /// Only errors: not "mounted" nor what the mount fetched.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    options: MountOptions,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match mount(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mount(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts, so that none of them takes the signals the waiting thread turns into an unmount.
    let signals = block_stop_signals().map_err(|e| format!("blocking SIGINT and SIGTERM: {e}"))?;
    let request = args.options.request(args.file.clone(), args.mountpoint.clone());
    let request = request.absolute().map_err(|e| format!("resolving the mount's paths: {e}"))?;
    let mount = DaemonMount::start(&args.daemon, &request)?;
    if !args.quiet {
        eprintln!("mounted {} (served by the mount daemon at {})", args.mountpoint.display(), args.daemon.display());
    }
    let mut unmounter = mount.unmounter()?;
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            unmounter.unmount();
        }
    });
    let summary = mount.wait()?;
    if !args.quiet {
        eprintln!("{}", ended_line(&args.mountpoint, &summary));
    }
    Ok(())
}
