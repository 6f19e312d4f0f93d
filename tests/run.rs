//! End to end: `clip pull`, `clip run`, `clip gc` and `clip config` on the realistic Debian image (see
//! tests/debian.rs) in a real registry, with real FUSE mounts, overlayfs and runc. Every test has its own
//! state and cache directories (CLIP_STATE_DIR, CLIP_CACHE_DIR).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clip_testkit::*;
use common::{debian_layout, node_command, node_env, text, wait_within};

/// A registry holding the Debian image as `debian:test`, and a node's state and cache directories.
struct Node {
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let registry = Registry::start();
        registry.push(&debian_layout(), "bookworm", "debian:test");
        Node { registry, dir: tempfile::tempdir().unwrap() }
    }

    fn image(&self) -> String {
        self.registry.image_ref("debian:test")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn env(&self) -> Vec<(String, String)> {
        node_env(self.dir.path())
    }

    fn command(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
        let mut env = self.env();
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        node_command(args, &env)
    }

    fn clip(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        self.command(args, extra_env).output().expect("running clip")
    }

    /// `clip run IMAGE -- CMD...`.
    fn run(&self, cmd: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let image = self.image();
        let mut args = vec!["run", image.as_str(), "--"];
        args.extend_from_slice(cmd);
        self.clip(&args, extra_env)
    }

    /// Clip FUSE mounts under this node's state directory, per /proc/mounts.
    fn clip_mounts(&self) -> Vec<String> {
        common::fuse_mounts_under(&self.state())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.clip(&["gc"], &[]);
        for m in self.clip_mounts() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "clip failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn run_prints_a_file_and_propagates_exit_codes_and_cleans_up() {
    let node = Node::new();
    let out = node.run(&["cat", "/etc/os-release"], &[]);
    assert_ok(&out);
    assert!(text(&out.stdout).contains("Debian GNU/Linux 12"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("cache miss"), "first run builds the index: {}", text(&out.stderr));

    let out = node.run(&["sh", "-c", "exit 3"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cache hit"), "second run finds the index: {}", text(&out.stderr));

    // The image's config applies: WorkingDir /opt/app, its PATH.
    let out = node.run(&["sh", "-c", "pwd; echo $PATH"], &[]);
    assert_ok(&out);
    assert!(text(&out.stdout).starts_with("/opt/app\n/usr/local/sbin:"), "{}", text(&out.stdout));

    // Nothing is left: no container directories, no overlay, and the last user unmounted the image.
    let containers = node.state().join("containers");
    assert_eq!(std::fs::read_dir(&containers).unwrap().count(), 0, "container directories left behind");
    assert!(node.clip_mounts().is_empty(), "mount left after the last run: {:?}", node.clip_mounts());
    assert_eq!(std::fs::read_dir(node.state().join("indexes")).unwrap().count(), 1);
}

#[test]
fn writes_stay_in_their_container() {
    let node = Node::new();
    let out = node.run(&["sh", "-c", "echo changed > /etc/motd && rm /etc/debian_version && cat /etc/motd"], &[]);
    assert_ok(&out);
    assert_eq!(text(&out.stdout), "changed\n");
    let out = node.run(&["sh", "-c", "cat /etc/motd /etc/debian_version"], &[]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Welcome to the clip benchmark image") && stdout.contains("12."), "{stdout}");
}

#[test]
fn concurrent_runs_share_one_mount() {
    let node = Node::new();
    let image = node.image();
    // The first run holds the mount until the test writes a line to its stdin, after the second ended.
    let mut first = node
        .command(&["run", &image, "--", "sh", "-c", "read go; cat /etc/debian_version"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within(Duration::from_secs(120), "first run never mounted", || !node.clip_mounts().is_empty());
    let out = node.run(&["cat", "/etc/debian_version"], &[]);
    assert_ok(&out);
    assert!(text(&out.stderr).contains("sharing the mount"), "{}", text(&out.stderr));
    assert_eq!(node.clip_mounts().len(), 1, "one mount for the image: {:?}", node.clip_mounts());
    use std::io::Write;
    first.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let first_out = first.wait_with_output().unwrap();
    assert_ok(&first_out);
    assert!(text(&first_out.stdout).starts_with("12."), "{}", text(&first_out.stdout));
    assert!(node.clip_mounts().is_empty(), "the last run out unmounts");
}

#[test]
fn pull_prints_a_mounted_rootfs_and_gc_unmounts_it() {
    let node = Node::new();
    let out = node.clip(&["pull", &node.image()], &[]);
    assert_ok(&out);
    let rootfs = PathBuf::from(text(&out.stdout).trim());
    assert!(rootfs.join("etc/debian_version").is_file(), "{}", rootfs.display());
    assert!(common::is_mountpoint(&rootfs));
    // A run shares the pulled mount; pull held no reference, so the run, the last user, unmounts.
    let out = node.clip(&["pull", &node.image()], &[]);
    assert_ok(&out);
    assert_eq!(text(&out.stdout).trim(), rootfs.display().to_string());
    assert_eq!(node.clip_mounts().len(), 1);
    let out = node.clip(&["gc"], &[]);
    assert_ok(&out);
    assert!(text(&out.stderr).contains("unmounted"), "{}", text(&out.stderr));
    assert!(!common::is_mountpoint(&rootfs), "gc unmounts a mount nobody uses");
}

#[test]
fn config_shows_values_from_file_and_env_with_their_sources() {
    let node = Node::new();
    let file = node.dir.path().join("config.toml");
    std::fs::write(
        &file,
        "clip_version = 1\ncache_size = \"2G\"\n[registries.\"127.0.0.1:5000\"]\nplain_http = true\n[s3]\nindex_store = \"s3://idx/prefix\"\n",
    )
    .unwrap();
    let out = node.clip(&["config", "--config", common::s(&file)], &[("CLIP_VERSION", "2")]);
    assert_ok(&out);
    let shown = text(&out.stdout);
    let line = |key: &str| shown.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap_or_default().to_owned();
    assert_eq!(line("clip_version"), "clip_version = 2  # env CLIP_VERSION", "{shown}");
    assert_eq!(line("cache_size"), format!("cache_size = {}  # file {}", 2u64 << 30, file.display()), "{shown}");
    assert!(line("state_dir").ends_with("# env CLIP_STATE_DIR"), "{shown}");
    assert!(line("runtime").ends_with("# default"), "{shown}");
    assert!(line("s3.index_store").contains("s3://idx/prefix"), "{shown}");
    assert!(
        line("registries.\"127.0.0.1:5000\".plain_http").starts_with("registries.\"127.0.0.1:5000\".plain_http = true"),
        "{shown}"
    );

    // A missing file given explicitly, a bad value: clear errors.
    let out = node.clip(&["config", "--config", "/nonexistent/clip.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/clip.toml"), "{}", text(&out.stderr));
    let out = node.clip(&["config"], &[("CLIP_VERSION", "3")]);
    assert!(text(&out.stderr).contains("must be 1"), "{}", text(&out.stderr));
}

#[test]
fn clip_version_1_runs_the_image_from_a_data_carrying_archive() {
    let node = Node::new();
    let out = node.run(&["sh", "-c", "cat /etc/debian_version; python3 -c 'print(6*7)'"], &[("CLIP_VERSION", "1")]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("12.") && stdout.contains("42"), "{stdout}");
    let archives: Vec<_> = std::fs::read_dir(node.state().join("v1")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let archive = clip_format::Archive::open(&archives[0]).unwrap();
    assert_eq!(archive.kind(), clip_format::ArchiveKind::DataCarrying);
}

#[test]
fn a_signal_to_clip_run_stops_the_container_and_cleans_up() {
    let node = Node::new();
    let image = node.image();
    let child = node
        .command(&["run", &image, "--", "sleep", "300"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let containers = node.state().join("containers");
    // The container's process runs (not just its directory): the signal must reach a running container.
    wait_within(Duration::from_secs(120), "the container's process never started", || {
        container_process_runs(&containers, b"sleep\x00300\x00")
    });
    let started = std::time::Instant::now();
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    // sleep as the container's PID 1 ignores SIGINT: killed after the grace period.
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "clip run took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("killing it"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(&containers).unwrap().count(), 0, "container directory left behind");
    assert!(node.clip_mounts().is_empty(), "mount left behind: {:?}", node.clip_mounts());
}

/// Whether one of the containers under `containers` (runc ids = directory names) is running and its process
/// has exactly this command line (`/proc/PID/cmdline`, NUL-separated): another `sleep 300` on the machine
/// does not count.
fn container_process_runs(containers: &std::path::Path, cmdline: &[u8]) -> bool {
    let Ok(dir) = std::fs::read_dir(containers) else { return false };
    dir.filter_map(|e| e.ok()).any(|e| {
        let state = Command::new("runc").arg("state").arg(e.file_name()).output();
        let Some(state) = state
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        else {
            return false;
        };
        state["status"] == "running"
            && state["pid"]
                .as_u64()
                .is_some_and(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline))
    })
}
