//! End to end: `clip daemon` serving mounts asked for by `clip mount --daemon SOCKET` and by the small client
//! `clip-mount`. Real parts: an image in a real registry, real FUSE mounts held by the one daemon process,
//! `umoci unpack` as the reference.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clip_testkit::*;
use common::{clip_fails, is_mountpoint, metric, mode, s, wait_within, MountProc, Served};

/// A `clip daemon` process; killed on drop.
struct DaemonProc {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl DaemonProc {
    /// Starts `clip daemon --socket SOCKET` and waits until the socket accepts connections.
    fn start(socket: &Path) -> DaemonProc {
        Self::start_logging(socket, "info")
    }

    /// [`DaemonProc::start`] logging what `filter` (`CLIP_LOG`) lets through.
    fn start_logging(socket: &Path, filter: &str) -> DaemonProc {
        Self::start_env(socket, filter, &[])
    }

    /// [`DaemonProc::start_logging`] with extra environment variables (the daemon's own credentials).
    fn start_env(socket: &Path, filter: &str, env: &[(String, String)]) -> DaemonProc {
        let log = socket.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_clip"))
            .args(["daemon", "--socket", s(socket)])
            .env("CLIP_LOG", filter)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning clip daemon");
        let mut d = DaemonProc { child: Some(child), socket: socket.into(), log };
        wait_within(Duration::from_secs(20), "clip daemon did not serve its socket", || {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("clip daemon exited with {status} before serving:\n{}", d.log());
            }
            UnixStream::connect(socket).is_ok()
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM; the daemon must exit cleanly and remove its socket.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
        common::exits_within(&mut child, Duration::from_secs(20), "clip daemon did not stop on SIGTERM");
        let status = child.wait().unwrap();
        assert!(status.success(), "clip daemon exited with {status}:\n{}", self.log());
        assert!(!self.socket.exists(), "the socket is removed on shutdown");
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `line` to the daemon at `socket` as a client would; its one-line answer.
fn ask(socket: &Path, line: &str) -> String {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).unwrap();
    reply
}

/// The PIDs of the processes that hold `/dev/fuse` open.
fn fuse_holders() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse"))) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_daemon_serves_several_mounts_each_as_long_as_its_client() {
    let img = Served::new(&conformance_image(Compression::Gzip));
    let socket = img.dir.path().join("mounts.sock");
    let mut daemon = DaemonProc::start(&socket);
    assert_eq!(mode(&socket), 0o600, "only the daemon's user may connect");
    let a = img.mount("a", &["--daemon", s(&socket)]);
    let b = img.mount("b", &["--daemon", s(&socket)]);
    assert_matches_umoci(img.layout.path(), "t", &a.dir, CompareOpts::conformance());
    assert_matches_umoci(img.layout.path(), "t", &b.dir, CompareOpts::conformance());
    // The daemon serves both: the clients hold no FUSE connection of their own.
    let holders = fuse_holders();
    assert!(holders.contains(&daemon.pid()), "the daemon holds the mounts' FUSE connections: {holders:?}");
    for client in [&a, &b] {
        let pid = client.child.as_ref().unwrap().id();
        assert!(!holders.contains(&pid), "a client holds a FUSE connection: {holders:?}");
    }

    // SIGTERM to a client ends its mount, and only its mount; the client prints what it fetched.
    let (a_dir, b_dir) = (a.dir.clone(), b.dir.clone());
    let a_log = a.stop();
    assert!(a_log.contains(&format!("unmounted {}: ", a_dir.display())) && a_log.contains("reads ("), "{a_log}");
    assert!(!is_mountpoint(&a_dir));
    assert!(is_mountpoint(&b_dir));
    assert_matches_umoci(img.layout.path(), "t", &b_dir, CompareOpts::conformance());

    // A mount unmounted from outside ends its client cleanly.
    assert!(Command::new("umount").arg(&b_dir).status().unwrap().success());
    let (status, b_log) = b.exited_within(Duration::from_secs(20), "the client did not end with its mount");
    assert!(status.success(), "{b_log}");
    assert!(b_log.contains("unmounted"), "{b_log}");

    // The daemon served both and still serves.
    let log = daemon.log();
    assert_eq!(log.matches("INFO clip_node::mount: mounted").count(), 2, "{log}");
    let c = img.mount("c", &["--daemon", s(&socket)]);
    assert_matches_umoci(img.layout.path(), "t", &c.dir, CompareOpts::conformance());
    c.stop();
    daemon.stop();
}

#[test]
fn a_stopping_daemon_unmounts_and_a_dead_client_leaves_no_mount() {
    let img = Served::new(&conformance_image(Compression::Zstd));
    let socket = img.dir.path().join("mounts.sock");
    let mut daemon = DaemonProc::start(&socket);

    // A client killed outright: the daemon sees its connection close and unmounts.
    let killed = img.mount("killed", &["--daemon", s(&socket)]);
    let killed_dir = killed.dir.clone();
    killed.kill9();
    wait_within(Duration::from_secs(20), "the mount of a killed client stayed", || !is_mountpoint(&killed_dir));

    // The daemon stopping ends every mount; their clients hear it and exit cleanly. A client that has
    // connected and asked nothing does not hold it up.
    let _idle = UnixStream::connect(&socket).unwrap();
    let kept = img.mount("kept", &["--daemon", s(&socket)]);
    assert_matches_umoci(img.layout.path(), "t", &kept.dir, CompareOpts::conformance());
    let kept_dir = kept.dir.clone();
    daemon.stop();
    assert!(!is_mountpoint(&kept_dir));
    let (status, log) = kept.exited_within(Duration::from_secs(20), "the client did not end with the daemon");
    assert!(status.success(), "{log}");
    assert!(log.contains(&format!("unmounted {}: ", kept_dir.display())), "{log}");
}

#[test]
fn daemon_errors_name_the_socket_and_what_to_do() {
    let img = Served::new(&conformance_image(Compression::Gzip));
    let dir = img.dir.path();
    let (index, mnt) = (img.index(), dir.join("mnt"));
    std::fs::create_dir(&mnt).unwrap();

    // No daemon.
    let missing = dir.join("none.sock");
    let err = clip_fails(&["mount", "--daemon", s(&missing), s(&index), s(&mnt)], "cannot reach the mount daemon");
    assert!(err.contains(&format!("clip daemon --socket {}", missing.display())), "{err}");

    // A path that is not a socket is refused and left as it was.
    let file = dir.join("file.sock");
    std::fs::write(&file, "mine").unwrap();
    let err = clip_fails(&["daemon", "--socket", s(&file)], "is not a socket");
    assert!(err.contains(s(&file)), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

    // A socket left by a daemon that is gone is taken over; one a daemon serves is refused.
    let socket = dir.join("mounts.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut daemon = DaemonProc::start(&socket);
    clip_fails(&["daemon", "--socket", s(&socket)], "another daemon serves this socket");

    // A mount the daemon cannot make: the client fails with the daemon's reason; the daemon serves on.
    std::fs::write(mnt.join("here"), "x").unwrap();
    let err = clip_fails(&["mount", "--daemon", s(&socket), s(&index), s(&mnt)], "not empty");
    assert!(err.contains("reported by the mount daemon"), "{err}");

    // Not a request: answered, and the daemon serves on.
    let reply = ask(&socket, "hello\n");
    assert!(reply.contains("failed") && reply.contains("not a mount request"), "{reply}");
    // A request naming a relative path: the daemon cannot tell what it is relative to.
    let mut request = serde_json::json!({
        "archive": "img.clip", "mountpoint": s(&dir.join("rel")), "cache_dir": null, "cache_size": 0,
        "no_cache": false, "read_timeout_ms": 1000, "plain_http": false, "s3_path_style": false,
        "allow_setuid": false, "metrics": null, "prefetch": false, "record_profile": null, "record_seconds": null,
        "record_spans": null, "profile": null, "no_startup_set": false, "content_cache": null,
    })
    .to_string();
    request.push('\n');
    let reply = ask(&socket, &request);
    assert!(reply.contains("img.clip is not an absolute path"), "{reply}");

    let m = MountProc::start(&index, &dir.join("ok"), &["--daemon", s(&socket), "--cache-dir", s(&img.cache())]);
    assert_matches_umoci(img.layout.path(), "t", &m.dir, CompareOpts::conformance());
    m.stop();
    daemon.stop();
}

/// Every regular file under `dir`, read to its end: the bytes read.
fn read_tree(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            total += read_tree(&entry.path());
        } else if kind.is_file() {
            total += std::fs::read(entry.path()).unwrap().len() as u64;
        }
    }
    total
}

#[test]
fn the_daemon_serves_a_layer_view_the_client_built_and_a_mount_without_a_disk_cache() {
    let image = conformance_image(Compression::Gzip);
    let img = Served::new(&image);
    let socket = img.dir.path().join("mounts.sock");
    let mut daemon = DaemonProc::start(&socket);
    let parts = img.dir.path().join("parts");
    // The view's index is a temporary file of the client's: it must live as long as the mount it serves.
    let layers_metrics = common::free_addr();
    let layers =
        img.mount("layers", &["--daemon", s(&socket), "--layers", "--parts", s(&parts), "--metrics", &layers_metrics]);
    let views: Vec<_> = std::fs::read_dir(&layers.dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(views.len(), image.layers.len(), "{views:?}");
    assert!(views.iter().map(|v| read_tree(v)).sum::<u64>() > 0, "the layers' files read");
    // The client's settings reach the daemon: its metrics address, its disk cache, or none.
    assert!(metric(&layers_metrics, "clip_cache_disk_lookups") > 0.0, "the mount with a cache looked into it");
    let uncached_metrics = common::free_addr();
    let uncached = MountProc::start(
        &img.index(),
        &img.dir.path().join("uncached"),
        &["--daemon", s(&socket), "--no-cache", "--metrics", &uncached_metrics],
    );
    assert_matches_umoci(img.layout.path(), "t", &uncached.dir, CompareOpts::conformance());
    assert_eq!(metric(&uncached_metrics, "clip_cache_disk_lookups"), 0.0, "a mount without a disk cache used one");
    uncached.stop();
    layers.stop();
    daemon.stop();
}

#[test]
fn the_daemon_refuses_a_client_of_another_user() {
    let img = Served::new(&conformance_image(Compression::Gzip));
    let socket = img.dir.path().join("mounts.sock");
    let mut daemon = DaemonProc::start(&socket);
    // Opened to everyone, the socket still serves only the daemon's user and root: nobody (65534) is told why.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    // A daemon that took the client would wait for its request: the reply is awaited 20 s at most.
    let read_reply = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(20)\n\
                      s.connect(sys.argv[1])\nprint(s.makefile().readline())";
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "python3", "-c", read_reply, s(&socket)])
        .output()
        .expect("running setpriv");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{reply}{}", String::from_utf8_lossy(&out.stderr));
    assert!(reply.contains("failed") && reply.contains("not uid 65534"), "{reply}");
    assert!(daemon.log().contains("refused a client of another user"), "{}", daemon.log());
    daemon.stop();
}

#[test]
fn the_small_client_mounts_as_clip_mount_does() {
    let img = Served::new(&conformance_image(Compression::Gzip));
    let dir = img.dir.path();
    let socket = dir.join("mounts.sock");
    // The disk cache's scan at open is logged at debug.
    let mut daemon = DaemonProc::start_logging(&socket, "info,clip_store::cache=debug");
    let (index, cache) = (img.index(), img.cache());

    // A mount through `clip-mount`, with settings: the daemon holds it, the client only waits.
    let metrics = common::free_addr();
    let args = ["--daemon", s(&socket), "--cache-dir", s(&cache), "--metrics", &metrics];
    let a = MountProc::small_client(&index, &dir.join("a"), &args);
    // The client says so once the daemon's answer reaches it, which may be just after the mount appears.
    let said = format!("mounted {}", a.dir.display());
    common::wait_within(Duration::from_secs(10), "the client did not say it mounted", || a.log().contains(&said));
    assert_matches_umoci(img.layout.path(), "t", &a.dir, CompareOpts::conformance());
    assert!(metric(&metrics, "clip_cache_disk_lookups") > 0.0, "the mount did not use the disk cache it was given");
    let holders = fuse_holders();
    assert!(holders.contains(&daemon.pid()), "the daemon holds the FUSE connection: {holders:?}");
    assert!(!holders.contains(&a.child.as_ref().unwrap().id()), "the client holds a FUSE connection: {holders:?}");

    // Its paths are resolved where it runs: a relative archive and mountpoint, from the test's directory.
    let mut rel = Command::new(env!("CARGO_BIN_EXE_clip-mount"));
    std::fs::create_dir(dir.join("rel")).unwrap();
    rel.current_dir(dir).args([s(&index), "rel", "--daemon", s(&socket), "--no-cache"]);
    let rel = MountProc::spawn_command(rel, &dir.join("rel"));
    assert_matches_umoci(img.layout.path(), "t", &rel.dir, CompareOpts::conformance());

    // SIGTERM and SIGINT each end the client's mount; it prints what the mount fetched.
    let a_dir = a.dir.clone();
    let log = a.stop();
    assert!(log.contains(&format!("unmounted {}: ", a_dir.display())) && log.contains("reads ("), "{log}");
    // Its metrics ended with it, though the daemon serves on: the address is free again.
    wait_within(Duration::from_secs(20), "the ended mount's metrics are still served", || {
        std::net::TcpStream::connect(&metrics).is_err()
    });
    let rel_dir = rel.dir.clone();
    let (status, log) = rel.signalled("INT", Duration::from_secs(20));
    assert!(status.success(), "{log}");
    assert!(log.contains("unmounted rel: "), "{log}");
    assert!(!is_mountpoint(&rel_dir));

    // An unmount from outside ends the client cleanly.
    let b = MountProc::small_client(&index, &dir.join("b"), &["--daemon", s(&socket), "--cache-dir", s(&cache), "-q"]);
    assert!(Command::new("umount").arg(&b.dir).status().unwrap().success());
    let (status, log) = b.exited_within(Duration::from_secs(20), "the client did not end with its mount");
    assert!(status.success() && log.is_empty(), "-q prints nothing: {log}");
    // The daemon kept the disk cache of the first mount open for the next one over it: scanned once.
    let scans = daemon.log().matches("scanned disk cache").count();
    assert_eq!(scans, 1, "{}", daemon.log());

    // The daemon's reason for a mount it cannot make.
    let full = dir.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("here"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clip-mount"))
        .args([s(&index), s(&full), "--daemon", s(&socket)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not empty") && err.contains("reported by the mount daemon"),
        "{err}"
    );
    daemon.stop();

    // No daemon at the socket CLIP_DAEMON names: the error says which and how to start one.
    let missing = dir.join("none.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_clip-mount"))
        .args([s(&index), s(&dir.join("b"))])
        .env("CLIP_DAEMON", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot reach the mount daemon at {0}", missing.display())), "{err}");
    assert!(err.contains(&format!("clip daemon --socket {}", missing.display())), "{err}");
    // A socket this user may not open: not told to start a daemon, told whom the daemon serves.
    let mut daemon = DaemonProc::start(&socket);
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", env!("CARGO_BIN_EXE_clip-mount")])
        .args([s(&index), s(&dir.join("b")), "--daemon", s(&socket)])
        .output()
        .expect("running setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Permission denied") && err.contains("its own user and root only"), "{err}");
    assert!(!err.contains("start one"), "{err}");
    daemon.stop();
    let help = Command::new(env!("CARGO_BIN_EXE_clip-mount")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains(clip_client::DEFAULT_SOCKET) && help.contains("--cache-dir"), "{help}");
}

#[test]
fn a_client_reads_a_bounded_answer_from_what_claims_to_be_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("liar.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // A "daemon" that reads the request, then answers with an endless line and keeps the connection open.
    let liar = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&conn).read_line(&mut request).unwrap();
        let junk = vec![b'x'; 64 << 10];
        while (&conn).write_all(&junk).is_ok() {}
        request
    });
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clip-mount"))
        .args([s(&dir.path().join("img.clip")), s(&mnt), "--daemon", s(&socket)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("its replies ran past 1 MiB"), "{err}");
    let request = liar.join().unwrap();
    assert!(request.contains("\"mountpoint\""), "{request}");
}

#[test]
fn the_daemon_serves_an_archive_in_s3_with_its_own_credentials() {
    // A data-carrying archive in a real S3 server (moto); only the daemon is given the S3 environment.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    reference_rootfs(&root, (3 << 20) / 2 + 4321);
    let s3 = S3Server::start();
    s3.create_bucket("clip-daemon");
    let url = "s3://clip-daemon/rootfs.clip";
    let out = common::clip_env(&["archive", s(&root), "-o", url, "--compress", "--span-mib", "1"], &s3.env());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let socket = dir.path().join("mounts.sock");
    let mut daemon = DaemonProc::start_env(&socket, "info", &s3.env());

    let mnt = dir.path().join("mnt");
    let mut client = Command::new(env!("CARGO_BIN_EXE_clip-mount"));
    client.args([url, s(&mnt), "--daemon", s(&socket), "--cache-dir", s(&dir.path().join("cache"))]);
    for (key, _) in s3.env() {
        client.env_remove(key);
    }
    let m = MountProc::spawn_command(client, &mnt);
    assert_trees_equal(&snapshot(&root), &snapshot(&m.dir), CompareOpts::default());
    let log = m.stop();
    assert!(log.contains("unmounted"), "{log}");
    daemon.stop();
}
