//! A real containerd for tests: Debian's `containerd` (1.6) with a private configuration — root, state,
//! gRPC socket and `opt` under a temporary directory, the CRI plugin off — and remote snapshotters added as
//! `[proxy_plugins.NAME] type = "snapshot"` at the sockets given. [`Containerd::ctr`] and
//! [`Containerd::ctr_remote`] run `ctr` / `ctr-remote` (Debian's `stargz-snapshotter`) against it, in a
//! namespace of its own. On drop its tasks are killed, containerd is stopped, everything mounted under its
//! directory is unmounted and the directory removed.
//!
//! Pulls from the test [`crate::Registry`] (plain HTTP on 127.0.0.1) need `--plain-http`. Containers run
//! with runc.
//!
//! ```no_run
//! use clip_testkit::Containerd;
//! # let socket = std::path::Path::new("/tmp/clip.sock");
//! let containerd = Containerd::start(&[("clip", socket)]);
//! containerd.ctr_ok(&["images", "pull", "--plain-http", "--snapshotter", "clip", "127.0.0.1:5000/app:1"]);
//! let out = containerd.ctr_ok(&["run", "--rm", "--snapshotter", "clip", "127.0.0.1:5000/app:1", "c1", "/bin/true"]);
//! # let _ = out;
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::server::read_log;

/// The containerd binary (Debian's `containerd` package).
pub const CONTAINERD_BINARY: &str = "containerd";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const INSTALL: &str = "apt-get install containerd stargz-snapshotter, or run dev/setup";

/// A running containerd with a private configuration. Stopped and cleaned up on drop.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    dir: TempDir,
    namespace: String,
}

impl Containerd {
    /// Starts containerd with one remote snapshotter per `(name, socket)` and waits until it answers.
    /// The snapshotters need not be up yet: containerd connects when one is first used.
    ///
    /// # Panics
    /// When containerd cannot start or does not answer within 30 s (the message holds its log).
    pub fn start(snapshotters: &[(&str, &Path)]) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("clip-containerd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating containerd's temporary directory: {e}"));
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml(dir.path(), snapshotters))
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let log_path = dir.path().join("containerd.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("cloning the containerd log handle: {e}"));
        let child = Command::new(CONTAINERD_BINARY)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CONTAINERD_BINARY}: {e} ({INSTALL})"));
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let namespace = format!("clip-test-{}-{}", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed));
        let mut containerd = Containerd { child: Some(child), dir, namespace };
        containerd.wait_ready();
        containerd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited with {status} while starting; its log:\n{}", self.log());
            }
            if self.address().exists() && self.ctr(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket (`ctr --address`).
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The namespace every `ctr` call of this harness uses (unique per harness, so cgroups and runc
    /// state never collide with another test's).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's root directory (content store, metadata, its own snapshotters).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A directory for `ctr`'s I/O FIFOs (`--fifo-dir`, e.g. of `ctr tasks exec`, which leaves its FIFOs
    /// behind), removed with the harness.
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.path().join("fifo")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("containerd.log"))
    }

    /// Runs `ctr --address ADDR --namespace NS ARGS`; returns its output whatever the exit code.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.client("ctr", args)
    }

    /// [`Containerd::ctr`] that must succeed; returns stdout.
    ///
    /// # Panics
    /// When `ctr` fails; the message holds its output and containerd's log.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.client_ok("ctr", args)
    }

    /// Runs `ctr-remote --address ADDR --namespace NS ARGS` (its `images rpull --snapshotter NAME` sets
    /// the remote-snapshot labels as CRI does); returns its output whatever the exit code.
    pub fn ctr_remote(&self, args: &[&str]) -> Output {
        self.client("ctr-remote", args)
    }

    /// [`Containerd::ctr_remote`] that must succeed; returns stdout.
    ///
    /// # Panics
    /// As [`Containerd::ctr_ok`].
    pub fn ctr_remote_ok(&self, args: &[&str]) -> String {
        self.client_ok("ctr-remote", args)
    }

    /// `ctr --address ADDR --namespace NS ARGS` as a command to spawn (e.g. a container that runs while the
    /// test does something else).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.command("ctr", args)
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--address").arg(self.address()).args(["--namespace", &self.namespace]).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn client(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e} ({INSTALL})"))
    }

    fn client_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.client(program, args);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "{program} {} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log (end):\n{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            tail(&self.log(), 40)
        );
        text(&out.stdout)
    }

    /// Kills and deletes this namespace's tasks (so their shims exit), then stops containerd.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "-f", id]);
        }
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        unmount_under(self.dir.path());
        // The runc shim keeps its state in a directory named by the namespace, outside containerd's state.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first (per /proc/self/mountinfo).
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn config_toml(dir: &Path, snapshotters: &[(&str, &Path)]) -> String {
    let d = dir.display();
    let mut c = format!(
        "version = 2\n\
         root = \"{d}/root\"\n\
         state = \"{d}/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{d}/containerd.sock\"\n\
         [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
         [debug]\n  address = \"{d}/debug.sock\"\n  level = \"info\"\n\
         [metrics]\n  address = \"\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
    );
    for (name, socket) in snapshotters {
        c.push_str(&format!("[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{}\"\n", socket.display()));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_private_and_names_each_snapshotter() {
        let c = config_toml(Path::new("/t"), &[("clip", Path::new("/s/clip.sock"))]);
        assert!(c.contains("root = \"/t/root\""), "{c}");
        assert!(c.contains("[grpc]\n  address = \"/t/containerd.sock\""), "{c}");
        assert!(c.contains("[proxy_plugins.clip]\n  type = \"snapshot\"\n  address = \"/s/clip.sock\""), "{c}");
    }
}
