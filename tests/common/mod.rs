//! Shared helpers of the end-to-end tests: run the real `clip` binary and check its outcome.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `clip` binary under test, as a command to add arguments, environment and pipes to. Its layer part
/// directory (`clip index`, `clip inspect`) is [`test_parts_dir`], never the machine's.
pub fn clip_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clip"));
    cmd.env("CLIP_PARTS_DIR", test_parts_dir());
    cmd
}

/// The layer part directory of this test process (nextest runs each test in its own): under the build's
/// `target/tmp/parts/`, named by process and start time, so a test reuses only the parts of its own earlier
/// `clip index` runs. A test that must read every layer again passes `--no-reuse`.
pub fn test_parts_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("parts").join(unique("test")))
}

/// Polls `done` (every 20 ms) until it holds; panics with `what` when it does not within `limit`.
pub fn wait_within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `child` exits; kills it and panics with `what` when it has not within `limit`.
pub fn exits_within(child: &mut std::process::Child, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("waiting for a child process").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} (waited {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The environment of a worker node whose state and span cache live in `root/state` and `root/cache`.
pub fn node_env(root: &Path) -> Vec<(String, String)> {
    vec![
        ("CLIP_STATE_DIR".to_owned(), root.join("state").display().to_string()),
        ("CLIP_CACHE_DIR".to_owned(), root.join("cache").display().to_string()),
    ]
}

/// The permission bits (and setuid/setgid/sticky) of `path` (of its target, for a symlink).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs `clip ARGS`; returns its output whatever the exit code.
pub fn clip(args: &[&str]) -> Output {
    clip_env(args, &[])
}

/// Runs `clip ARGS` with extra environment variables (e.g. an S3 server's `AWS_*`); returns its output.
pub fn clip_env(args: &[&str], env: &[(String, String)]) -> Output {
    clip_command()
        .args(args)
        .env("CLIP_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running the clip binary")
}

/// [`clip_ok`] with extra environment variables.
pub fn clip_ok_env(args: &[&str], env: &[(String, String)]) -> Vec<u8> {
    let out = clip_env(args, env);
    assert!(out.status.success(), "clip {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Runs `clip ARGS` and panics with its stderr unless it succeeds; returns stdout.
pub fn clip_ok(args: &[&str]) -> Vec<u8> {
    let out = clip(args);
    assert!(out.status.success(), "clip {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Runs `clip ARGS`, expects it to fail cleanly (non-zero exit, an `error:` line, no panic) with a message
/// containing `needle`; returns stderr.
pub fn clip_fails(args: &[&str], needle: &str) -> String {
    clip_fails_env(args, &[], needle)
}

/// [`clip_fails`] with extra environment variables.
pub fn clip_fails_env(args: &[&str], env: &[(String, String)], needle: &str) -> String {
    let out = clip_env(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "clip {args:?} should have failed; stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "clip {args:?}: exit code {:?}; stderr:\n{stderr}", out.status.code());
    assert!(!stderr.contains("panicked"), "clip {args:?} panicked:\n{stderr}");
    assert!(!stderr.contains("memory allocation"), "clip {args:?} aborted on an allocation:\n{stderr}");
    assert!(stderr.contains("error:"), "clip {args:?}: no error line:\n{stderr}");
    assert!(stderr.to_lowercase().contains(&needle.to_lowercase()), "clip {args:?}: expected {needle:?} in:\n{stderr}");
    stderr
}

/// A path as a `&str` for command lines.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A `clip mount` child process; unmounts (SIGTERM, then a lazy umount) and reaps it on drop.
pub struct MountProc {
    pub child: Option<std::process::Child>,
    pub dir: std::path::PathBuf,
    /// Its stderr so far, read as it comes.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl MountProc {
    /// Starts `clip mount INDEX DIR EXTRA...` and waits until DIR is a mount point (at most 20 s).
    pub fn start(index: &Path, dir: &Path, extra: &[&str]) -> MountProc {
        Self::start_env(index.as_os_str(), dir, extra, &[])
    }

    /// [`MountProc::start`] of an archive location (a path or `s3://BUCKET/KEY`) with extra environment
    /// variables.
    pub fn start_env(archive: &std::ffi::OsStr, dir: &Path, extra: &[&str], env: &[(String, String)]) -> MountProc {
        let mut cmd = clip_command();
        cmd.arg("mount").arg(archive).arg(dir).args(extra).env("CLIP_LOG", "info");
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn_command(cmd, dir)
    }

    /// `clip-mount INDEX DIR EXTRA...` (the mount daemon's small client), started as [`MountProc::start`].
    pub fn small_client(index: &Path, dir: &Path, extra: &[&str]) -> MountProc {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clip-mount"));
        cmd.arg(index).arg(dir).args(extra);
        Self::spawn_command(cmd, dir)
    }

    /// Spawns `cmd`, which mounts on `dir`, and waits until `dir` is a mount point (at most 20 s).
    pub fn spawn_command(mut cmd: std::process::Command, dir: &Path) -> MountProc {
        std::fs::create_dir_all(dir).unwrap();
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawning a mount");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), std::sync::Arc::clone(&log));
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut m = MountProc { child: Some(child), dir: dir.to_path_buf(), log, reader: Some(reader) };
        wait_within(Duration::from_secs(20), &format!("the mount of {} did not come up", dir.display()), || {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.reader.take().unwrap().join().unwrap();
                panic!("the mount exited with {status} before mounting:\n{}", m.log());
            }
            is_mountpoint(dir)
        });
        m
    }

    /// What the mount has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the process's stderr.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        nix_kill(child.id(), libc_sigterm());
        let status = child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let stderr = self.log();
        assert!(status.success(), "clip mount exited with {status}:\n{stderr}");
        assert!(!is_mountpoint(&self.dir), "still mounted after clip mount exited");
        stderr
    }

    /// Waits (at most `limit`) for the mount process to exit on its own; its exit status and stderr.
    pub fn exited_within(mut self, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        exits_within(&mut child, limit, what);
        let status = child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        (status, self.log())
    }

    /// Sends `signal` (as `kill` names it: "INT", "TERM") and waits (at most `limit`) for the process to exit;
    /// its exit status and stderr.
    pub fn signalled(self, signal: &str, limit: Duration) -> (std::process::ExitStatus, String) {
        nix_kill(self.child.as_ref().unwrap().id(), signal);
        self.exited_within(limit, &format!("the mount process did not exit on SIG{signal}"))
    }

    /// `kill -9` the mount process (then detach the dead mount).
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            nix_kill(child.id(), libc_sigterm());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mountpoint(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn libc_sigterm() -> &'static str {
    "TERM"
}

fn nix_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Whether `dir` is a mount point, per /proc/self/mountinfo.
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else { return false };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap_or("")))
}

/// Reads `http://ADDR/metrics` and returns the value of the first sample line starting with `prefix`.
pub fn metric(addr: &str, prefix: &str) -> f64 {
    let resp = clip_testkit::http_get(addr, "/metrics", &[]).expect("scraping metrics");
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in:\n{body}"))
}

/// (path, data offset, size) of every regular file of an uncompressed tar, read with the `tar` crate (an
/// independent parser, so tests do not check clip against itself).
pub fn tar_files(tar: &[u8]) -> Vec<(String, u64, u64)> {
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type().is_file())
        .map(|e| (e.path().unwrap().display().to_string(), e.raw_file_position(), e.size()))
        .collect()
}

/// The first regular file of `tar` whose path `pick` accepts.
pub fn tar_file(tar: &[u8], pick: impl Fn(&str) -> bool) -> (String, u64, u64) {
    tar_files(tar).into_iter().find(|(p, _, _)| pick(p)).expect("file in tar")
}

/// The realistic Debian image (bookworm + python3, mmdebstrap) as an OCI layout tagged `bookworm`, built
/// once per checkout by `dev/debian-image` (cached under target/; concurrent callers wait on its lock).
pub fn debian_layout() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/clip-images/debian");
    let status = Command::new(root.join("dev/debian-image")).arg(&dir).status().expect("running dev/debian-image");
    assert!(status.success(), "dev/debian-image failed (needs mmdebstrap and Debian's mirror)");
    dir
}

/// The value of the sample `series` (name with its labels, exactly as written, e.g.
/// `clip_image_fallbacks_total{reason="mount_failed"}`) in a Prometheus text file, such as the image
/// metrics `clip pull`/`run` write to `STATE_DIR/metrics/clip-images.prom`.
pub fn textfile_metric(path: &Path, series: &str) -> f64 {
    let body = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in {}:\n{body}", path.display()))
}

/// An image pushed to a real registry, reached through a counting (and, on demand, faulty) proxy, and
/// indexed through that proxy by `clip index`, so every blob byte a mount reads is counted at the proxy.
pub struct Served {
    pub registry: clip_testkit::Registry,
    /// The proxy; `None` while the registry is "down" (nothing listens on `proxy_addr`).
    proxy: Option<clip_testkit::Proxy>,
    /// The address the index names as its registry.
    proxy_addr: String,
    /// The image as built (the `umoci unpack` reference), tag `t`.
    pub layout: clip_testkit::OciLayoutBuilder,
    pub dir: tempfile::TempDir,
}

impl Served {
    /// `image` served and indexed with clip's default span size.
    pub fn new(image: &clip_testkit::Image) -> Served {
        Served::with_index_args(image, &[])
    }

    /// `image` served and indexed with `--span-mib span_mib`.
    pub fn with_span_mib(image: &clip_testkit::Image, span_mib: u32) -> Served {
        Served::with_index_args(image, &["--span-mib", &span_mib.to_string()])
    }

    fn with_index_args(image: &clip_testkit::Image, extra: &[&str]) -> Served {
        use clip_testkit::{OciLayoutBuilder, Proxy, ProxyConfig, Registry};
        let registry = Registry::start();
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("t", image);
        registry.push(layout.path(), "t", "img:t");
        let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.clip");
        let mut args = vec!["index"];
        let image_ref = proxy.image_ref("img:t");
        args.extend([image_ref.as_str(), "-o", s(&out)]);
        args.extend_from_slice(extra);
        clip_ok(&args);
        proxy.reset_stats();
        Served { registry, proxy_addr: proxy.addr(), proxy: Some(proxy), layout, dir }
    }

    pub fn proxy(&self) -> &clip_testkit::Proxy {
        self.proxy.as_ref().expect("the proxy is running")
    }

    /// Stops the proxy (connections to the registry's address are refused) and, given a config, starts a
    /// new one on the same address.
    pub fn restart_proxy(&mut self, config: Option<clip_testkit::ProxyConfig>) {
        self.proxy = None;
        self.proxy = config.map(|c| clip_testkit::Proxy::bind(&self.proxy_addr, &self.registry.addr(), c).unwrap());
    }

    pub fn index(&self) -> std::path::PathBuf {
        self.dir.path().join("img.clip")
    }

    pub fn cache(&self) -> std::path::PathBuf {
        self.dir.path().join("cache")
    }

    /// Mounts the index at `DIR/name` with the shared cache dir and `extra` flags.
    pub fn mount(&self, name: &str, extra: &[&str]) -> MountProc {
        let cache = self.cache();
        let mut args = vec!["--cache-dir", s(&cache)];
        args.extend_from_slice(extra);
        MountProc::start(&self.index(), &self.dir.path().join(name), &args)
    }
}

/// Runs `clip ARGS` as a worker node would, with info logs and no node configuration leaking in from the
/// environment (`CLIP_CONFIG`, `CLIP_VERSION`, …); `env` adds the test's own. Returns the output whatever
/// the exit code.
pub fn clip_node(args: &[&str], env: &[(String, String)]) -> Output {
    node_command(args, env).output().expect("running the clip binary")
}

/// The command of [`clip_node`], to spawn it instead (stdin closed; stdout and stderr as set by the caller).
pub fn node_command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = clip_command();
    cmd.args(args)
        .env("CLIP_LOG", "info")
        .env_remove("CLIP_CONFIG")
        .env_remove("CLIP_VERSION")
        .env_remove("CLIP_PUBLISH_INDEX")
        .env_remove("CLIP_S3_INDEX_STORE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null());
    cmd
}

/// Bytes as (lossy) UTF-8 text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// FUSE mounts whose mountpoint lies under `dir`, per /proc/mounts.
pub fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse")))
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(dir.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

/// `clip pull IMAGE` on a node (`env`); `check` sees the rootfs while it is mounted, then `clip gc`
/// unmounts it. Returns the pull's stderr.
pub fn pull_and_gc(image: &str, env: &[(String, String)], check: impl FnOnce(&Path)) -> String {
    let out = clip_node(&["pull", image], env);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "clip pull failed:\n{stderr}");
    let rootfs = std::path::PathBuf::from(text(&out.stdout).trim());
    check(&rootfs);
    let gc = clip_node(&["gc"], env);
    assert!(gc.status.success(), "clip gc: {}", text(&gc.stderr));
    stderr
}

/// A small two-layer image (gzip, then zstd with a whiteout) for the image-client tests; see
/// [`check_app_tree`].
pub fn app_image() -> clip_testkit::Image {
    use clip_testkit::{Compression, Image, Layer, LayerBuilder};
    let mut lower = LayerBuilder::new();
    lower.dir("etc").file("etc/greeting", "hello from the image\n").file("etc/gone", "x");
    let mut upper = LayerBuilder::new();
    upper.file("etc/upper", "second layer\n").whiteout("etc/gone");
    Image::new(vec![Layer::new(lower.finish(), Compression::Gzip), Layer::new(upper.finish(), Compression::Zstd)])
}

/// Checks a rootfs of [`app_image`]: both layers' files, and the whiteout applied.
pub fn check_app_tree(rootfs: &Path) {
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/greeting")).unwrap(), "hello from the image\n");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/upper")).unwrap(), "second layer\n");
    assert!(!rootfs.join("etc/gone").exists(), "the whiteout applies");
}

/// An OCI layout holding an image as `t`, and its index built by `clip index oci:LAYOUT:t`.
pub struct Indexed {
    pub layout: clip_testkit::OciLayoutBuilder,
    pub dir: tempfile::TempDir,
}

impl Indexed {
    pub fn new(image: &clip_testkit::Image) -> Indexed {
        let mut layout = clip_testkit::OciLayoutBuilder::new();
        layout.add_image("t", image);
        let indexed = Indexed { layout, dir: tempfile::tempdir().unwrap() };
        clip_ok(&["index", &indexed.reference(), "-o", s(&indexed.index())]);
        indexed
    }

    /// `oci:LAYOUT:t`.
    pub fn reference(&self) -> String {
        format!("oci:{}:t", self.layout.path().display())
    }

    pub fn index(&self) -> std::path::PathBuf {
        self.dir.path().join("img.clip")
    }

    /// `name` in the temporary directory (which holds the index, `img.clip`).
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Mounts the index at `DIR/mnt` without a disk cache.
    pub fn mount(&self) -> MountProc {
        MountProc::start(&self.index(), &self.dir.path().join("mnt"), &["--no-cache"])
    }
}

/// `127.0.0.1:PORT` with a port nothing listens on now (for `--metrics` and proxies).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", clip_testkit::find_free_port())
}

/// `EIO`, what a reader of a mount gets when clip cannot serve the bytes.
pub const EIO: i32 = 5;

/// The byte at offset `i` of a [`write_pattern`] file.
fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Writes a file of `len` bytes (a multiple of 1 MiB) that is neither sparse nor all zeros, so reading or
/// writing it takes real work.
pub fn write_pattern(path: &Path, len: usize) {
    use std::io::Write;
    let chunk: Vec<u8> = (0..1 << 20).map(pattern_byte).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..len / chunk.len() {
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

/// Whether `path` holds what [`write_pattern`] wrote (read in chunks, never whole).
pub fn is_pattern(path: &Path) -> bool {
    use std::io::Read;
    let want: Vec<u8> = (0..1 << 20).map(pattern_byte).collect();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return true;
        }
        if buf[..n] != want[..n] {
            return false;
        }
    }
}

/// A name no other test run uses: `clip-WHAT-PID-NANOS` (for files outside a test's temp dir).
pub fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("clip-{what}-{}-{nanos}", std::process::id())
}

/// Every file under `dir` (recursively) except temp files: what a disk cache holds.
pub fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(cache_files(&p));
        } else if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p);
        }
    }
    out
}
