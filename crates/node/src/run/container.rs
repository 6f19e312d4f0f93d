//! One container: `STATE_DIR/containers/<id>/` (`containers/` is 0700) holds `upper/` and `work/` (its
//! writable layer on local disk), `rootfs/` (an overlay of that layer over the image's shared mount, without
//! `nosuid`: the container's setuid binaries work there) and `config.json`; the OCI
//! runtime runs it there with stdin/stdout/stderr inherited. Everything is undone when it ends, also on
//! errors and signals (forwarded to the runtime; the container is killed 5 s later if still running):
//! `runtime delete`, the overlay unmounted, the directory removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::run::mounts::is_mountpoint;
use crate::run::{private_dir, NodeError};

/// How long a container may take to exit after SIGINT/SIGTERM before it is killed.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A container's directory and overlay; [`Container::remove`] (or drop) undoes them.
#[derive(Debug)]
pub(crate) struct Container {
    pub id: String,
    pub dir: PathBuf,
    runtime: String,
    removed: bool,
}

impl Container {
    /// Makes a fresh container directory under `containers_dir` whose rootfs is an overlay over `lower`.
    pub fn create(containers_dir: &Path, lower: &Path, runtime: &str) -> Result<Container, NodeError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let id = format!("clip-{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff);
        private_dir(containers_dir)?;
        let dir = containers_dir.join(&id);
        let container = Container { id, dir, runtime: runtime.to_owned(), removed: false };
        let (upper, work, rootfs) = (container.dir.join("upper"), container.dir.join("work"), container.rootfs());
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d).map_err(NodeError::io(d, "creating the container directory"))?;
        }
        for p in [lower, &upper, &work] {
            if p.to_str().is_none_or(|s| s.contains([',', ':', '\\'])) {
                return Err(NodeError::OverlayPath { path: p.to_path_buf() });
            }
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
            .map_err(|source| NodeError::Overlay { path: rootfs.clone(), source })?;
        debug!(id = %container.id, rootfs = %rootfs.display(), "overlay mounted");
        Ok(container)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Writes the runtime spec into the bundle.
    pub fn write_spec(&self, spec: &serde_json::Value) -> Result<(), NodeError> {
        let path = self.dir.join("config.json");
        let bytes = serde_json::to_vec_pretty(spec)
            .map_err(|e| NodeError::State { path: path.clone(), message: e.to_string() })?;
        std::fs::write(&path, bytes).map_err(NodeError::io(&path, "writing the runtime spec"))
    }

    /// Runs the container in the foreground (`runtime run --bundle DIR ID`), forwarding SIGINT and SIGTERM
    /// to the runtime, and returns its exit code (128 + signal number when it was killed by a signal).
    pub async fn run(&self) -> Result<i32, NodeError> {
        let mut child = Command::new(&self.runtime)
            .arg("run")
            .arg("--bundle")
            .arg(&self.dir)
            .arg(&self.id)
            .spawn()
            .map_err(|source| NodeError::Spawn { program: self.runtime.clone(), source })?;
        let pid = Pid::from_raw(child.id() as i32);
        let runtime_dir = self.dir.clone();
        let mut wait = tokio::task::spawn_blocking(move || child.wait());
        let mut int =
            signal(SignalKind::interrupt()).map_err(NodeError::io(&runtime_dir, "installing signal handlers"))?;
        let mut term =
            signal(SignalKind::terminate()).map_err(NodeError::io(&runtime_dir, "installing signal handlers"))?;
        // A container's PID 1 ignores signals it has no handler for: after a grace period, kill it.
        let mut deadline: Option<tokio::time::Instant> = None;
        let status = loop {
            let grace = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = &mut wait => break status,
                _ = int.recv() => { let _ = kill(pid, Signal::SIGINT); deadline.get_or_insert_with(|| tokio::time::Instant::now() + KILL_GRACE); }
                _ = term.recv() => { let _ = kill(pid, Signal::SIGTERM); deadline.get_or_insert_with(|| tokio::time::Instant::now() + KILL_GRACE); }
                _ = grace => {
                    warn!(id = %self.id, "container still running after the signal; killing it");
                    let _ = Command::new(&self.runtime).args(["kill", "--all", &self.id, "KILL"]).status();
                    deadline = Some(tokio::time::Instant::now() + KILL_GRACE);
                }
            }
        };
        let status = status
            .map_err(|e| NodeError::io(&runtime_dir, "waiting for the runtime")(std::io::Error::other(e.to_string())))?
            .map_err(NodeError::io(&runtime_dir, "waiting for the runtime"))?;
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        info!(id = %self.id, code, "container exited");
        Ok(code)
    }

    /// Deletes the container from the runtime, unmounts its overlay and removes its directory.
    pub fn remove(mut self) -> Result<(), NodeError> {
        self.removed = true;
        self.teardown()
    }

    fn teardown(&self) -> Result<(), NodeError> {
        let out = Command::new(&self.runtime).args(["delete", "-f", &self.id]).output();
        if let Ok(out) = &out {
            // "does not exist" is expected after a normal exit (runc run deletes what it ran).
            if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("not exist") {
                debug!(id = %self.id, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "runtime delete");
            }
        }
        let rootfs = self.rootfs();
        if is_mountpoint(&rootfs) {
            if let Err(error) = umount2(&rootfs, MntFlags::empty()) {
                warn!(rootfs = %rootfs.display(), %error, "overlay busy; detaching it lazily");
                umount2(&rootfs, MntFlags::MNT_DETACH)
                    .map_err(|e| NodeError::io(&rootfs, "unmounting the overlay")(e.into()))?;
            }
        }
        if is_mountpoint(&rootfs) {
            return Err(NodeError::io(&rootfs, "unmounting the overlay")(std::io::Error::other("still mounted")));
        }
        std::fs::remove_dir_all(&self.dir).map_err(NodeError::io(&self.dir, "removing the container directory"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(error) = self.teardown() {
                warn!(id = %self.id, error = &error as &dyn std::error::Error, "cleaning up the container");
            }
        }
    }
}
