//! Shared mounts: one FUSE mount per image (per archive key) under `STATE_DIR/mounts/<key>/rootfs`, served
//! by a detached `clip mount` process (`nosuid`, `nodev`) and shared by every container of that image.
//! `mounts/` and every `mounts/<key>/` are 0700, so no other local user can reach a mount.
//!
//! `STATE_DIR/mounts/<key>/state.json` lists the mount process and the users (processes, by pid and start
//! time, so a crashed user is noticed and dropped); it is only read and written under an exclusive `flock`
//! of `STATE_DIR/mounts/<key>/lock`. The last user to leave unmounts; `clip pull` mounts without becoming a
//! user, and [`gc`] unmounts what no live process uses.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::run::{private_dir, NodeError};
use crate::MountSpec;

/// How long a new mount may take to appear.
const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a mount process may take to unmount and exit after SIGTERM.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proc {
    pid: u32,
    start: u64,
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
            return None;
        }
        Some(Proc { pid, start: fields.get(19)?.parse().ok()? })
    }

    fn current() -> Proc {
        Proc::of(std::process::id()).unwrap_or(Proc { pid: std::process::id(), start: 0 })
    }

    fn alive(&self) -> bool {
        Proc::of(self.pid) == Some(*self)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    mount: Option<Proc>,
    users: Vec<Proc>,
}

/// What to mount and how: the `clip` binary, which serves the mount (`clip serve-mount SPEC`), and the spec.
#[derive(Debug, Clone)]
pub(crate) struct MountCommand {
    pub exe: PathBuf,
    pub spec: MountSpec,
}

/// One image's mount directory, locked.
struct Locked {
    dir: PathBuf,
    _lock: Flock<File>,
    state: State,
}

/// Takes an exclusive `flock` on `lock_path` (created if missing), held until the result is dropped.
pub(crate) fn lock_exclusive(lock_path: &Path) -> Result<Flock<File>, NodeError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(NodeError::io(lock_path, "opening the lock file"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| NodeError::io(lock_path, "locking")(errno.into()))
}

impl Locked {
    fn open(dir: &Path) -> Result<Locked, NodeError> {
        private_dir(dir)?;
        std::fs::create_dir_all(dir.join("rootfs")).map_err(NodeError::io(dir, "creating the mount directory"))?;
        let lock = lock_exclusive(&dir.join("lock"))?;
        let state_path = dir.join("state.json");
        let mut state: State = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| NodeError::State { path: state_path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(NodeError::io(&state_path, "reading")(e)),
        };
        state.users.retain(Proc::alive);
        Ok(Locked { dir: dir.to_path_buf(), _lock: lock, state })
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn save(&self) -> Result<(), NodeError> {
        let path = self.dir.join("state.json");
        let bytes = serde_json::to_vec(&self.state)
            .map_err(|e| NodeError::State { path: path.clone(), message: e.to_string() })?;
        let write = |f: &mut std::fs::File| std::io::Write::write_all(f, &bytes);
        Ok(clip_image::write_atomically(&path, |f| write(f).map_err(clip_image::ImageError::io(&path, "writing")))?)
    }

    /// Whether the mount is live: mounted and its process running.
    fn live(&self) -> bool {
        is_mountpoint(&self.rootfs()) && self.state.mount.is_some_and(|p| p.alive())
    }

    /// Mounts unless live; returns whether it mounted now.
    fn ensure_mounted(&mut self, cmd: &MountCommand) -> Result<bool, NodeError> {
        if self.live() {
            return Ok(false);
        }
        self.unmount(); // whatever is left of an earlier mount
        let rootfs = self.rootfs();
        let log_path = self.dir.join("mount.log");
        let log = File::create(&log_path).map_err(NodeError::io(&log_path, "creating the mount log"))?;
        let spec_path = self.dir.join("mount.json");
        cmd.spec.save(&spec_path)?;
        let mut child = Command::new(&cmd.exe)
            .arg("serve-mount")
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for one container does not reach the shared mount.
            .process_group(0)
            .spawn()
            .map_err(|source| NodeError::Spawn { program: cmd.exe.display().to_string(), source })?;
        let started = Instant::now();
        while !is_mountpoint(&rootfs) {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail = tail.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>();
                return Err(NodeError::MountExited {
                    archive: cmd.spec.archive.clone(),
                    status: status.to_string(),
                    log: log_path,
                    tail: tail.join("\n"),
                });
            }
            if started.elapsed() > MOUNT_READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NodeError::MountTimeout {
                    mountpoint: rootfs,
                    secs: MOUNT_READY_TIMEOUT.as_secs(),
                    log: log_path,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.state.mount = Proc::of(child.id());
        info!(archive = %cmd.spec.archive.display(), mountpoint = %rootfs.display(), pid = child.id(), "mounted (shared)");
        // The child is not waited for: it outlives this process; init reaps it.
        drop(child);
        Ok(true)
    }

    /// Stops the mount process (it unmounts on SIGTERM), then detaches whatever is still mounted.
    fn unmount(&mut self) {
        let rootfs = self.rootfs();
        if let Some(p) = self.state.mount.take().filter(Proc::alive) {
            let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + UNMOUNT_TIMEOUT;
            while p.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if p.alive() {
                warn!(pid = p.pid, "mount process did not exit after SIGTERM; killing it");
                let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
            }
        }
        if is_mountpoint(&rootfs) {
            debug!(mountpoint = %rootfs.display(), "detaching a leftover mount");
            if let Err(error) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
                warn!(mountpoint = %rootfs.display(), %error, "detaching failed");
            }
        }
    }
}

/// A user's hold on a shared mount; [`Lease::release`] (or drop) gives it back, and the last user out
/// unmounts.
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
    rootfs: PathBuf,
    user: Proc,
    released: bool,
}

impl Lease {
    /// The mounted root filesystem.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// Drops this user; unmounts when no other user is left.
    pub fn release(mut self) -> Result<(), NodeError> {
        self.released = true;
        release(&self.dir, self.user)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            if let Err(error) = release(&self.dir, self.user) {
                warn!(error = &error as &dyn std::error::Error, "releasing the shared mount");
            }
        }
    }
}

fn release(dir: &Path, user: Proc) -> Result<(), NodeError> {
    let mut locked = Locked::open(dir)?;
    if let Some(i) = locked.state.users.iter().position(|u| *u == user) {
        locked.state.users.remove(i);
    }
    if locked.state.users.is_empty() {
        info!(mountpoint = %locked.rootfs().display(), "last user gone: unmounting");
        locked.unmount();
    }
    locked.save()
}

/// Ensures the mount `dir/rootfs` of `cmd.spec.archive` is live; with `hold`, the calling process becomes a user
/// and gets a [`Lease`]. Returns the rootfs path and whether it was mounted now.
pub(crate) fn acquire(dir: &Path, cmd: &MountCommand, hold: bool) -> Result<(PathBuf, Option<Lease>, bool), NodeError> {
    let mut locked = Locked::open(dir)?;
    let mounted_now = locked.ensure_mounted(cmd)?;
    if !mounted_now {
        info!(mountpoint = %locked.rootfs().display(), users = locked.state.users.len(), "sharing the mount");
    }
    let rootfs = locked.rootfs();
    let lease = if hold {
        let user = Proc::current();
        locked.state.users.push(user);
        Some(Lease { dir: dir.to_path_buf(), rootfs: rootfs.clone(), user, released: false })
    } else {
        None
    };
    locked.save()?;
    Ok((rootfs, lease, mounted_now))
}

/// Whether the shared mount in `dir` is live: mounted, and its process running.
pub(crate) fn live(dir: &Path) -> Result<bool, NodeError> {
    Ok(Locked::open(dir)?.live())
}

/// Unmounts the shared mount in `dir` whatever its users.
pub(crate) fn unmount(dir: &Path) -> Result<(), NodeError> {
    let mut locked = Locked::open(dir)?;
    info!(mountpoint = %locked.rootfs().display(), "unmounting");
    locked.unmount();
    locked.save()
}

/// What [`crate::Node::gc`] did to one mount.
#[derive(Debug, Clone)]
pub struct GcEntry {
    pub mountpoint: PathBuf,
    /// Live users (the mount was kept when any).
    pub users: usize,
    pub unmounted: bool,
}

/// Unmounts every shared mount under `mounts_dir` that no live process uses.
pub(crate) fn gc(mounts_dir: &Path) -> Result<Vec<GcEntry>, NodeError> {
    if mounts_dir.is_dir() {
        private_dir(mounts_dir)?;
    }
    let entries = match std::fs::read_dir(mounts_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NodeError::io(mounts_dir, "listing mounts")(e)),
    };
    let mut report = Vec::new();
    for entry in entries {
        let dir = entry.map_err(NodeError::io(mounts_dir, "listing mounts"))?.path();
        if !dir.is_dir() {
            continue;
        }
        let mut locked = Locked::open(&dir)?;
        let users = locked.state.users.len();
        let mounted = is_mountpoint(&locked.rootfs()) || locked.state.mount.is_some_and(|p| p.alive());
        if users == 0 && mounted {
            locked.unmount();
        }
        locked.save()?;
        report.push(GcEntry { mountpoint: locked.rootfs(), users, unmounted: users == 0 && mounted });
    }
    Ok(report)
}

/// Whether `dir` is a mount point, per /proc/self/mountinfo.
pub(crate) fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else { return false };
    let Some(canon) = canon.to_str() else { return false };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4) == Some(canon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_told_apart_by_start_time() {
        let me = Proc::current();
        assert!(me.alive());
        assert!(!Proc { pid: me.pid, start: me.start + 1 }.alive());
        assert!(!Proc { pid: u32::MAX / 2, start: 0 }.alive());
    }

    #[test]
    fn a_plain_directory_is_not_a_mountpoint() {
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(d.path()));
        assert!(is_mountpoint(Path::new("/")));
    }

    #[test]
    fn dead_users_are_dropped_when_the_state_is_read() {
        let d = tempfile::tempdir().unwrap();
        let state = State { mount: None, users: vec![Proc::current(), Proc { pid: u32::MAX / 2, start: 1 }] };
        std::fs::create_dir_all(d.path()).unwrap();
        std::fs::write(d.path().join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
        let locked = Locked::open(d.path()).unwrap();
        assert_eq!(locked.state.users, vec![Proc::current()]);
    }
}
