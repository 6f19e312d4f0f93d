//! End to end: `clip snapshotter` as containerd's snapshotter. Real parts: Debian's containerd 1.6 with a
//! private config (the testkit's [`Containerd`]), the real registry, `ctr`, runc, overlayfs. An image of
//! three layers (host programs; files, hard links, symlinks, xattrs, a FIFO; whiteouts and an opaque
//! directory, zstd) is pulled with `ctr images pull --snapshotter clip`: containerd downloads and unpacks
//! every layer into our snapshots (the fallback path: no layer is remote yet). Containers run with runc;
//! their snapshots, and a container running meanwhile, outlive a `kill -9` of the snapshotter.
//!
//! Lazily: `ctr-remote images rpull` (labels naming image and layer on each Prepare) through the counting
//! proxy, with the image's index and layer parts in the snapshotter's root: every layer is a directory of
//! one FUSE mount of the image's layer views, and containerd downloads none of them.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clip_testkit::*;
use common::s;

/// The snapshotter's name in containerd's config.
const NAME: &str = "clip";

/// A `clip snapshotter` process; killed on drop.
struct SnapshotterProc {
    child: Option<Child>,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
    /// Its `--metrics` address.
    metrics: String,
}

impl SnapshotterProc {
    /// Starts `clip snapshotter` and waits until its socket accepts connections.
    fn start(socket: &Path, root: &Path, log: &Path) -> SnapshotterProc {
        SnapshotterProc::start_with(socket, root, log, &format!("127.0.0.1:{}", find_free_port()))
    }

    fn start_with(socket: &Path, root: &Path, log: &Path, metrics: &str) -> SnapshotterProc {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_clip"))
            .args(["snapshotter", "--address", s(socket), "--root", s(root), "--metrics", metrics])
            .env("CLIP_LOG", "debug")
            // A span cache of its own: lazy reads are counted from a cold cache.
            .env("CLIP_CACHE_DIR", root.with_file_name("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning clip snapshotter");
        let mut p = SnapshotterProc {
            child: Some(child),
            socket: socket.into(),
            root: root.into(),
            log: log.into(),
            metrics: metrics.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(socket).is_err() {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("clip snapshotter exited with {status} before serving:\n{}", p.log());
            }
            assert!(Instant::now() < deadline, "clip snapshotter did not serve within 20 s:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn restart(&mut self) {
        *self = SnapshotterProc::start_with(&self.socket, &self.root, &self.log, &self.metrics);
    }

    /// The value of the first sample of its metrics that starts with `prefix`.
    fn metric(&self, prefix: &str) -> f64 {
        common::metric(&self.metrics, prefix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to clean up.
    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; the process must exit cleanly and remove its socket.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "clip snapshotter did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "clip snapshotter exited with {status}:\n{}", self.log());
        assert!(!self.socket.exists(), "the socket is removed on shutdown");
    }
}

impl Drop for SnapshotterProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Unmounts the layer views under a snapshotter's `ROOT/mounts` on drop: they outlive the snapshotter by
/// design (running containers read from them), so a test ends them itself; their processes then exit.
struct ViewsGuard(PathBuf);

impl Drop for ViewsGuard {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

/// A registry holding [`image`], containerd, and `clip snapshotter` as its snapshotter `clip`. Dropped in
/// field order: containerd (its tasks and mounts) before the snapshotter.
struct Node {
    containerd: Containerd,
    snapshotter: SnapshotterProc,
    registry: Registry,
    layout: OciLayoutBuilder,
    _views: ViewsGuard,
    dir: tempfile::TempDir,
    /// The image's reference through a proxy, when pulled through one.
    via: Option<String>,
}

impl Node {
    fn new() -> Node {
        Node::with_image(&image())
    }

    fn with_image(image: &Image) -> Node {
        let registry = Registry::start();
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("t", image);
        registry.push(layout.path(), "t", "snap:t");
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("clip.sock");
        let snapshotter =
            SnapshotterProc::start(&socket, &dir.path().join("root"), &dir.path().join("snapshotter.log"));
        let containerd = Containerd::start(&[(NAME, &socket)]);
        let _views = ViewsGuard(dir.path().join("root/mounts"));
        Node { containerd, snapshotter, registry, layout, _views, dir, via: None }
    }

    fn image_ref(&self) -> String {
        self.via.clone().unwrap_or_else(|| self.registry.image_ref("snap:t"))
    }

    fn ctr(&self, args: &[&str]) -> String {
        self.containerd.ctr_ok(args)
    }

    /// `ctr run --snapshotter clip IMAGE ID sh -c SCRIPT` (kept unless `rm`); returns its stdout.
    fn run(&self, id: &str, rm: bool, script: &str) -> String {
        let image = self.image_ref();
        let mut args = vec!["run", "--snapshotter", NAME];
        if rm {
            args.push("--rm");
        }
        args.extend([image.as_str(), id, "/bin/sh", "-c", script]);
        self.ctr(&args)
    }

    /// Restarts the snapshotter and waits until containerd is connected to it again: containerd's gRPC
    /// client redials a restarted plugin with a backoff, failing calls meanwhile.
    fn restart_snapshotter(&mut self) {
        self.snapshotter.restart();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.containerd.ctr(&["snapshots", "--snapshotter", NAME, "ls"]);
            if out.status.success() {
                return;
            }
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                stderr.contains("connection refused") || stderr.contains("unavailable"),
                "ctr snapshots ls: {stderr}"
            );
            assert!(Instant::now() < deadline, "containerd did not reconnect to the snapshotter within 30 s: {stderr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The image's root tree, a view of its top layer (`ctr snapshots view`: an overlay of every layer's
    /// snapshot, mounted as `ctr snapshots view --target` prints), equals umoci's unpack. Overlayfs reports 1 link
    /// for a merged directory. (`ctr images mount` would want the layer blobs, which a lazy pull never has.)
    fn assert_matches_umoci(&self, opts: CompareOpts) {
        let mnt = self.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mount = self.top_view_mount("umoci-view", &mnt);
        run(Command::new("sh").arg("-c").arg(mount.trim()));
        let opts = CompareOpts { ignore_dir_nlink: true, ..opts };
        let result = std::panic::catch_unwind(|| assert_matches_umoci(self.layout.path(), "t", &mnt, &opts));
        run(Command::new("umount").arg(&mnt));
        let _ = self.containerd.ctr(&["snapshots", "--snapshotter", NAME, "rm", "umoci-view"]);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }

    /// Starts container `waiting` running `script` (with `--rm`) and waits until containerd reports it running.
    fn start_waiting(&self, script: &str) -> Child {
        let image = self.image_ref();
        let child = self
            .containerd
            .ctr_command(&["run", "--rm", "--snapshotter", NAME, &image, "waiting", "/bin/sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_within(Duration::from_secs(30), "the container runs", || {
            self.ctr(&["tasks", "ls"]).lines().any(|l| l.starts_with("waiting") && l.contains("RUNNING"))
        });
        child
    }

    /// Writes `go` into the image's FIFO from inside container `waiting` (see [`Node::start_waiting`]), waits
    /// for it to end successfully and returns its output.
    fn release_waiting(&self, mut waiting: Child) -> std::process::Output {
        let fifos = self.containerd.fifo_dir();
        let exec = ["tasks", "exec", "--fifo-dir", s(&fifos), "--exec-id", "writer", "waiting", "/bin/sh", "-c"];
        self.ctr(&[&exec[..], &["echo go > /data/fifo"]].concat());
        common::wait_within(Duration::from_secs(30), "the container ends", || waiting.try_wait().unwrap().is_some());
        let out = waiting.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Makes the view `key` of the top committed layer and returns the mount command `ctr` prints for it at
    /// `target`. Printed as it is created: the view itself may be collected at once (no lease holds it),
    /// while its mount (the committed layers) stays valid.
    fn top_view_mount(&self, key: &str, target: &Path) -> String {
        let rows = self.snapshots();
        let top = rows
            .iter()
            .find(|(key, _, kind)| kind == "Committed" && !rows.iter().any(|(_, parent, _)| parent == key))
            .expect("a top layer");
        self.ctr(&["snapshots", "--snapshotter", NAME, "view", "--target", s(target), key, &top.0])
    }

    /// `ctr snapshots --snapshotter clip ls`: (key, parent, kind) rows.
    fn snapshots(&self) -> Vec<(String, String, String)> {
        let out = self.ctr(&["snapshots", "--snapshotter", NAME, "ls"]);
        out.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                    [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                    _ => panic!("unexpected ctr snapshots ls row: {l:?}"),
                }
            })
            .collect()
    }
}

/// Three layers: host programs (`sh`, `cat`); files with a hard link, symlinks (relative, absolute,
/// dangling), xattrs, a FIFO, a setuid file, directories to be hidden; then (zstd) a whiteout, an opaque
/// directory with a new file, and a changed file. Every directory is declared in each layer that writes
/// into it, as `docker build` does.
fn image() -> Image {
    let mut programs = LayerBuilder::new();
    for e in host_programs(&[("/usr/bin/dash", "bin/sh", 0o755), ("/usr/bin/cat", "bin/cat", 0o755)]) {
        programs.entry(e);
    }
    let mut files = LayerBuilder::new();
    files
        .dir("data")
        .entry(Entry::file("data/a", "alpha\n").xattr("user.clip", "layer 2"))
        .hardlink("data/b", "data/a")
        .symlink("data/rel", "a")
        .symlink("data/abs", "/data/a")
        .symlink("data/dangling", "nowhere")
        .entry(
            Entry::file("data/cap", "#!/bin/sh\n")
                .mode(0o755)
                .xattr("security.capability", capability_v2(1 << CAP_NET_RAW, 0, true)),
        )
        .entry(Entry::file("data/suid", "x").mode(0o4755))
        .fifo("data/fifo")
        .file("data/gone", "hidden above\n")
        .dir("opq")
        .file("opq/old", "hidden by the opaque marker\n")
        .dir("opq/sub");
    let mut changes = LayerBuilder::new();
    changes
        .dir("data")
        .whiteout("data/gone")
        .file("data/changed", "layer 3\n")
        .dir("opq")
        .opaque("opq")
        .file("opq/new", "new\n");
    Image::new(vec![
        Layer::new(programs.finish(), Compression::Gzip),
        Layer::new(files.finish(), Compression::Gzip),
        Layer::new(changes.finish(), Compression::Zstd),
    ])
}

#[test]
fn containerd_pulls_and_runs_an_image_through_the_clip_snapshotter() {
    let node = Node::new();
    let image = node.image_ref();
    node.ctr(&["images", "pull", "--plain-http", "--snapshotter", NAME, &image]);
    let committed: Vec<_> = node.snapshots().into_iter().filter(|(_, _, kind)| kind == "Committed").collect();
    assert_eq!(committed.len(), 3, "one committed snapshot per layer: {committed:?}");

    let out = node.run(
        "c0",
        true,
        "cat /data/a /data/b /data/rel /data/abs /opq/new /data/changed; \
         for p in /data/gone /opq/old /opq/sub; do [ -e $p ] && echo $p present || echo $p absent; done",
    );
    assert_eq!(out, "alpha\nalpha\nalpha\nalpha\nnew\nlayer 3\n/data/gone absent\n/opq/old absent\n/opq/sub absent\n");

    node.assert_matches_umoci(CompareOpts::default());

    // Two containers of the image: each writes into its own snapshot and sees only its own writes.
    let script_of = |id: &str| format!("echo {id} >> /written; cat /written");
    assert_eq!(node.run("c1", false, &script_of("c1")), "c1\n");
    assert_eq!(node.run("c2", false, &script_of("c2")), "c2\n", "c2 sees none of c1's writes");
    let again = node.ctr(&["tasks", "start", "c1"]);
    assert_eq!(again, "c1\nc1\n", "c1's own writes stay in its snapshot");
    let rows = node.snapshots();
    for id in ["c1", "c2"] {
        let row = rows.iter().find(|(key, _, _)| key == id).unwrap_or_else(|| panic!("no snapshot {id}: {rows:?}"));
        assert_eq!(row.2, "Active", "{row:?}");
        assert!(committed.iter().any(|(key, _, _)| *key == row.1), "{id} is based on the image's top layer: {row:?}");
    }
    assert!(node.snapshotter.log().contains("committed"), "{}", node.snapshotter.log());
}

#[test]
fn snapshots_outlive_a_restart_of_the_snapshotter() {
    let mut node = Node::new();
    let image = node.image_ref();
    node.ctr(&["images", "pull", "--plain-http", "--snapshotter", NAME, &image]);
    assert_eq!(node.run("before", false, "echo kept >> /mark; cat /mark"), "kept\n");
    // A container that runs across the restart: it waits for a writer on the image's FIFO, then reads.
    let waiting = node.start_waiting("read line < /data/fifo; cat /data/a; echo $line");
    let listed = node.snapshots();
    let usage = node.ctr(&["snapshots", "--snapshotter", NAME, "usage"]);

    // kill -9: no clean shutdown; the stale socket is replaced on start.
    node.snapshotter.kill9();
    node.restart_snapshotter();
    assert_eq!(node.snapshots(), listed, "every snapshot is still there, with its parent and kind");
    assert_eq!(node.ctr(&["snapshots", "--snapshotter", NAME, "usage"]), usage);
    let out = node.release_waiting(waiting);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alpha\ngo\n", "the running container kept its files");
    assert_eq!(node.run("after", true, "cat /data/a; [ -e /mark ] || echo no mark"), "alpha\nno mark\n");
    assert_eq!(node.ctr(&["tasks", "start", "before"]), "kept\nkept\n", "a snapshot from before keeps its files");

    // SIGTERM: a clean stop that removes the socket; the state is still there on the next start.
    node.snapshotter.stop();
    node.restart_snapshotter();
    node.ctr(&["containers", "rm", "before"]);
    let after: Vec<String> = node.snapshots().into_iter().map(|(key, _, _)| key).collect();
    assert!(!after.iter().any(|k| k == "before"), "a removed container's snapshot is gone: {after:?}");
    assert_eq!(after.len(), 3, "the image's layers stay: {after:?}");
}

#[test]
fn an_address_that_is_not_a_socket_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "precious").unwrap();
    let root = dir.path().join("root");
    let stderr = common::clip_fails(&["snapshotter", "--address", s(&file), "--root", s(&root)], "not a socket");
    assert!(stderr.contains(s(&file)), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

/// The oracle for clip's layer views: the layer snapshots containerd's own applier wrote (the fallback path
/// unpacks every layer into our snapshot directories) must equal `clip extract --layer N` of the same image,
/// layer by layer: whiteouts as 0/0 character devices, the opaque directory's xattr, implicit parents.
#[test]
fn containerd_s_layer_snapshots_equal_clip_s_layer_views() {
    let node = Node::new();
    let image = node.image_ref();
    node.ctr(&["images", "pull", "--plain-http", "--snapshotter", NAME, &image]);
    // A view of the top layer mounts every layer's directory as a lowerdir, the top one first.
    let mounts = node.top_view_mount("layers-view", &node.dir.path().join("unused"));
    let lowerdir = mounts
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir in {mounts:?}"));
    let mut layer_dirs: Vec<PathBuf> = lowerdir.split(':').map(PathBuf::from).collect();
    layer_dirs.reverse();

    let index = node.dir.path().join("img.clip");
    let parts = node.dir.path().join("parts");
    common::clip_ok(&["index", &image, "-o", s(&index), "--parts", s(&parts)]);
    assert_eq!(layer_dirs.len(), 3, "{mounts}");
    for (n, dir) in layer_dirs.iter().enumerate() {
        let out = node.dir.path().join(format!("layer{n}"));
        common::clip_ok(&["extract", "--layer", &n.to_string(), "--parts", s(&parts), s(&index), s(&out)]);
        let (expected, actual) = (snapshot(dir), snapshot(&out));
        // containerd creates a whiteout device without setting its mtime; clip keeps the tar entry's.
        let whiteouts = expected.nodes.iter().filter(|(_, n)| n.kind == FileKind::CharDevice && n.rdev == 0);
        let opts = CompareOpts::default().ignoring_mtime_of(whiteouts.map(|(p, _)| p));
        let diffs = compare(&expected, &actual, opts);
        assert!(
            diffs.is_empty(),
            "layer {n}: containerd's snapshot {} != clip's view:\n{}",
            dir.display(),
            diffs.join("\n")
        );
    }
    let _ = node.containerd.ctr(&["snapshots", "--snapshotter", NAME, "rm", "layers-view"]);
}

/// [`image`] and a 16 MiB layer of incompressible bytes no container reads.
fn bulky_image() -> Image {
    let mut image = image();
    let mut bulk = LayerBuilder::new();
    bulk.dir("bulk").file("bulk/blob", pseudo_random_bytes(7, 16 << 20));
    image.layers.push(Layer::new(bulk.finish(), Compression::Gzip));
    image
}

#[test]
fn rpull_serves_every_layer_lazily_from_the_layer_views() {
    let bulky = bulky_image();
    let layer_bytes: u64 = bulky.layers.iter().map(|l| l.blob().len() as u64).sum();
    let mut node = Node::with_image(&bulky);
    let proxy = Proxy::start(&node.registry.addr(), ProxyConfig::default());
    let image = proxy.image_ref("snap:t");
    // The image was indexed before (its index in the node's store, its layer parts kept): what `clip pull`
    // or an earlier node left.
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let head = node.registry.get("/v2/snap/manifests/t", &accept);
    let digest = head.header("docker-content-digest").expect("manifest digest").to_owned();
    let root = node.snapshotter.root.clone();
    let index = root.join("indexes").join(format!("{}.clip", digest.replacen(':', "-", 1)));
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    common::clip_ok(&["index", &image, "-o", s(&index)]);
    common::clip_ok(&["ls", "--layer", "0", "--parts", s(&root.join("parts")), s(&index)]);
    proxy.reset_stats();

    node.containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", NAME, &image]);
    let pulled = proxy.stats();
    let committed: Vec<_> = node.snapshots().into_iter().filter(|(_, _, kind)| kind == "Committed").collect();
    assert_eq!(committed.len(), 4, "one committed snapshot per layer: {committed:?}");
    let log = node.snapshotter.log();
    assert_eq!(log.matches("layer served lazily").count(), 4, "{log}");
    let ratio = pulled.blob_bytes as f64 / layer_bytes as f64;
    eprintln!(
        "rpull: {} blob bytes of {layer_bytes} compressed layer bytes ({:.4} %), {} requests",
        pulled.blob_bytes,
        100.0 * ratio,
        pulled.requests
    );
    assert!(ratio < 0.05, "rpull fetched {} of {layer_bytes} layer bytes", pulled.blob_bytes);

    // A container of the lazily pulled image: reads only what it touches.
    node.via = Some(image.clone());
    let out = node.run("lazy", true, "cat /data/a /data/changed; [ -e /data/gone ] || echo gone");
    assert_eq!(out, "alpha\nlayer 3\ngone\n");
    let ran = proxy.stats();
    eprintln!(
        "rpull + run: {} blob bytes ({:.4} % of the layers)",
        ran.blob_bytes,
        100.0 * ran.blob_bytes as f64 / layer_bytes as f64
    );
    assert!(ran.blob_bytes < layer_bytes / 4, "running read {} of {layer_bytes} layer bytes", ran.blob_bytes);
    // The metrics: every layer committed remote, none left to containerd, and the views' store metrics
    // labelled with the image: what the container read was fetched there.
    let p = &node.snapshotter;
    assert_eq!(p.metric("clip_snapshotter_remote_layers_committed_total"), 4.0);
    assert_eq!(p.metric("clip_snapshotter_layer_fallbacks_total{reason=\"range_refused\"}"), 0.0);
    assert_eq!(p.metric("clip_snapshotter_layer_mounts"), 1.0);
    let fetched = p.metric(&format!("clip_fetched_bytes_total{{image=\"{digest}\"}}"));
    assert!(fetched > 0.0 && fetched <= ran.blob_bytes as f64, "fetched {fetched}, proxy {}", ran.blob_bytes);
    assert!(p.metric(&format!("clip_fuse_requests_total{{image=\"{digest}\",op=\"lookup\"}}")) > 0.0);
    assert!(p.metric(&format!("clip_layer_fetched_bytes_total{{image=\"{digest}\",layer=")) >= 0.0);
    node.assert_matches_umoci(CompareOpts::default());

    // Two containers over the lazy layers: each writes into its own snapshot and sees only its own writes.
    let script_of = |id: &str| format!("echo {id} >> /data/a; cat /data/a");
    assert_eq!(node.run("w1", true, &script_of("w1")), "alpha\nw1\n");
    assert_eq!(node.run("w2", true, &script_of("w2")), "alpha\nw2\n", "w2 sees none of w1's writes");

    // kill -9 while a container runs: its layers stay served (the views' mount process is not the
    // snapshotter's), it reads on after the restart, and every snapshot is still listed.
    let waiting = node.start_waiting("read line < /data/fifo; cat /data/changed; echo $line");
    let listed = node.snapshots();
    node.snapshotter.kill9();
    node.restart_snapshotter();
    assert_eq!(node.snapshots(), listed, "every snapshot is still there, with its parent and kind");
    let out = node.release_waiting(waiting);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "layer 3\ngo\n", "the running container kept reading");
    assert!(node.snapshotter.log().contains("layer views still mounted"), "{}", node.snapshotter.log());

    // A restart with the views gone (as after a reboot): they are mounted again.
    node.snapshotter.kill9();
    let views = root.join("mounts").join(format!("{}-layers", digest.replacen(':', "-", 1))).join("rootfs");
    unmount_under(&views);
    node.restart_snapshotter();
    assert_eq!(node.run("again", true, "cat /data/a"), "alpha\n");
    let log = node.snapshotter.log();
    assert!(log.contains("layer views mounted again"), "{log}");

    // Removing the image and its snapshots releases the views: unmounted.
    node.ctr(&["images", "rm", "--sync", &image]);
    common::wait_within(Duration::from_secs(30), "the layer snapshots are removed", || node.snapshots().is_empty());
    common::wait_within(Duration::from_secs(30), "the views are unmounted", || {
        !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(s(&views))
    });
}

#[test]
fn a_registry_that_refuses_range_requests_falls_back_to_containerd_unpacking() {
    let mut node = Node::new();
    let proxy = Proxy::start(&node.registry.addr(), ProxyConfig::default());
    proxy.set_faults(vec![Fault::new(FaultKind::IgnoreRange).blobs_only()]);
    let image = proxy.image_ref("snap:t");
    node.via = Some(image.clone());
    node.containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", NAME, &image]);
    let log = node.snapshotter.log();
    assert!(!log.contains("layer served lazily"), "{log}");
    assert_eq!(log.matches("layer not served lazily").count(), 3, "one reason a layer: {log}");
    assert!(log.contains("refuses Range requests"), "{log}");
    let p = &node.snapshotter;
    assert_eq!(p.metric("clip_snapshotter_layer_fallbacks_total{reason=\"range_refused\"}"), 3.0);
    assert_eq!(p.metric("clip_snapshotter_remote_layers_committed_total"), 0.0);
    assert_eq!(p.metric("clip_snapshotter_layer_mounts"), 0.0, "no views are mounted for a refused image");
    let committed = node.snapshots().into_iter().filter(|(_, _, kind)| kind == "Committed").count();
    assert_eq!(committed, 3, "containerd unpacked every layer");
    assert_eq!(node.run("fallback", true, "cat /data/a /opq/new"), "alpha\nnew\n");
    node.assert_matches_umoci(CompareOpts::default());
}

#[test]
fn an_image_sharing_lower_layers_reuses_their_remote_snapshots() {
    let mut node = Node::new();
    let image = node.image_ref();
    node.containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", NAME, &image]);
    node.layout.add_image("b", &bulky_image());
    node.registry.push(node.layout.path(), "b", "snap:b");
    let b = node.registry.image_ref("snap:b");
    node.containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", NAME, &b]);
    let log = node.snapshotter.log();
    assert_eq!(log.matches("layer served lazily").count(), 4, "3 layers of the first image, 1 new one: {log}");
    assert_eq!(node.snapshots().len(), 4, "the shared layers have one snapshot each");
    node.via = Some(b);
    assert_eq!(node.run("b", true, "cat /data/a; [ -f /bulk/blob ] && echo bulk"), "alpha\nbulk\n");
}

/// Debian bookworm with python3 (`dev/debian-image`, three gzip layers), indexed before: `rpull` through the
/// counting proxy fetches a sliver of its layers, and python starts from the lazily served layers.
#[test]
fn rpull_of_debian_fetches_a_sliver_and_runs_python() {
    let layout = common::debian_layout();
    let registry = Registry::start();
    registry.push(&layout, "bookworm", "debian:bookworm");
    let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
    let image = proxy.image_ref("debian:bookworm");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let _views = ViewsGuard(root.join("mounts"));
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let digest = registry.get("/v2/debian/manifests/bookworm", &accept);
    let digest = digest.header("docker-content-digest").expect("manifest digest").replacen(':', "-", 1);
    let index = root.join("indexes").join(format!("{digest}.clip"));
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    common::clip_ok(&["index", &image, "-o", s(&index)]);
    common::clip_ok(&["ls", "--layer", "0", "--parts", s(&root.join("parts")), s(&index)]);
    let inspect: serde_json::Value =
        serde_json::from_slice(&common::clip_ok(&["inspect", "--json", s(&index)])).unwrap();
    let layer_bytes = inspect["image_size"].as_u64().expect("image_size");
    let socket = dir.path().join("clip.sock");
    let snapshotter = SnapshotterProc::start(&socket, &root, &dir.path().join("snapshotter.log"));
    let containerd = Containerd::start(&[(NAME, &socket)]);
    proxy.reset_stats();

    containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", NAME, &image]);
    let pulled = proxy.stats().blob_bytes;
    let out = containerd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        NAME,
        &image,
        "py",
        "python3",
        "-c",
        "import json,sqlite3; print('ok')",
    ]);
    assert_eq!(out, "ok\n");
    let ran = proxy.stats().blob_bytes;
    let pct = |b: u64| 100.0 * b as f64 / layer_bytes as f64;
    eprintln!(
        "debian: {layer_bytes} compressed layer bytes; rpull fetched {pulled} ({:.3} %), rpull + run {ran} ({:.2} %)",
        pct(pulled),
        pct(ran)
    );
    assert!(pct(pulled) <= 5.0, "rpull fetched {pulled} of {layer_bytes}:\n{}", snapshotter.log());
    assert_eq!(snapshotter.log().matches("layer served lazily").count(), 3, "{}", snapshotter.log());
}

/// Machine A indexes the image and publishes the index with its layer parts (`clip index --push`); this
/// node's snapshotter, on a fresh root (machine B), takes both from the registry: its rpull fetches a
/// sliver of the layers and indexes none of them.
#[test]
fn rpull_takes_the_index_and_layer_parts_published_with_the_image() {
    let bulky = bulky_image();
    let layer_bytes: u64 = bulky.layers.iter().map(|l| l.blob().len() as u64).sum();
    let mut node = Node::with_image(&bulky);
    let machine_a = node.dir.path().join("machine-a");
    std::fs::create_dir_all(&machine_a).unwrap();
    let (index, parts) = (machine_a.join("img.clip"), machine_a.join("parts"));
    let published = node.registry.image_ref("snap:t");
    common::clip_ok(&["index", &published, "-o", s(&index), "--parts", s(&parts), "--push"]);

    let proxy = Proxy::start(&node.registry.addr(), ProxyConfig::default());
    let image = proxy.image_ref("snap:t");
    node.containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", NAME, &image]);
    let pulled = proxy.stats().blob_bytes;
    let log = node.snapshotter.log();
    eprintln!(
        "rpull with published parts: {pulled} blob bytes of {layer_bytes} ({:.3} %)",
        100.0 * pulled as f64 / layer_bytes as f64
    );
    assert!(pulled * 20 <= layer_bytes, "rpull fetched {pulled} of {layer_bytes} layer bytes:\n{log}");
    assert!(log.contains("index from registry"), "{log}");
    assert!(log.contains("layer parts published with the index"), "{log}");
    assert!(!log.contains("building index"), "no index is built: {log}");
    assert!(!log.contains("layer indexed"), "no layer is indexed: {log}");
    assert_eq!(log.matches("layer served lazily").count(), 4, "{log}");
    node.via = Some(image);
    assert_eq!(node.run("b", true, "cat /data/a"), "alpha\n");
}

/// One image whose index is being built from a stalled registry holds up no other: while its Prepare waits
/// on the stalled layer, another image is pulled lazily and a container of it runs.
#[test]
fn an_image_stalled_while_it_is_indexed_holds_up_no_other_image() {
    let mut node = Node::new();
    let mut bulk = LayerBuilder::new();
    bulk.dir("bulk").file("bulk/blob", pseudo_random_bytes(9, 4 << 20));
    let slow_image = Image::new(vec![Layer::new(bulk.finish(), Compression::Gzip)]);
    let built = node.layout.add_image("slow", &slow_image);
    node.registry.push(node.layout.path(), "slow", "snap:slow");
    let stalled_layer = built.layers[0].digest.to_string();
    let proxy = Proxy::start(&node.registry.addr(), ProxyConfig::default());
    proxy.set_faults(vec![Fault::new(FaultKind::StallAfter { after_bytes: 0 })
        .blobs_only()
        .path_contains(&stalled_layer)]);
    let slow_ref = proxy.image_ref("snap:slow");
    let rpull = |image: &str| {
        Command::new("ctr-remote")
            .arg("--address")
            .arg(node.containerd.address())
            .args(["--namespace", node.containerd.namespace(), "images", "rpull", "--plain-http"])
            .args(["--snapshotter", NAME, image])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running ctr-remote")
    };
    let mut slow = rpull(&slow_ref);
    common::wait_within(Duration::from_secs(30), "the slow image's index build reaches the stalled layer", || {
        proxy.stats().faults_injected >= 1
    });

    let mut fast = rpull(&node.image_ref());
    common::exits_within(&mut fast, Duration::from_secs(60), "the other image's rpull ends while one is stalled");
    assert!(fast.wait().unwrap().success(), "{}", node.snapshotter.log());
    assert_eq!(node.run("fast", true, "cat /data/a"), "alpha\n");
    let log = node.snapshotter.log();
    assert_eq!(log.matches("layer served lazily").count(), 3, "{log}");
    assert!(slow.try_wait().unwrap().is_none(), "the stalled image's rpull is still waiting");
    assert!(
        !log.lines().any(|l| l.contains(&stalled_layer) && l.contains("lazily")),
        "the stalled layer's Prepare has not returned: {log}"
    );
    let _ = slow.kill();
    let _ = slow.wait();
}
