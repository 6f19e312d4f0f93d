//! End to end: data-carrying (v1) archives. `clip archive` of a root filesystem with every correctness case,
//! then `extract` and `mount`, from a local file, from S3 (a real S3 server, moto, on 127.0.0.1) and from a
//! local metadata copy whose data is in S3, must give a tree identical to the source. S3 traffic is counted
//! at the server side (a proxy in front of moto) to prove reads are lazy and cached; faults (5xx, a dead
//! server, missing objects, bad credentials) must give clear errors and EIO to readers, never a crash.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use clip_testkit::*;
use common::{clip_env, clip_fails, clip_fails_env, clip_ok, clip_ok_env, s, MountProc};
use rstest::rstest;

const BUCKET: &str = "clip-e2e";
/// Span size used by most tests (`--span-mib 1`), so the big file spans several spans cheaply.
const SPAN: u64 = 1 << 20;
/// The reference tree's large file: more than two spans, not a multiple of the span size.
const BIG_LEN: usize = (5 << 20) / 2 + 12_345;

/// A temporary directory holding the reference root filesystem and its snapshot.
struct Fixture {
    dir: tempfile::TempDir,
    tree: Tree,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        reference_rootfs(&root, BIG_LEN);
        let tree = snapshot(&root);
        Fixture { dir, tree }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `clip archive ROOTFS -o OUTPUT --span-mib 1 EXTRA...`; returns stderr.
    fn archive(&self, output: &str, extra: &[&str], env: &[(String, String)]) -> String {
        let root = self.root();
        let mut args = vec!["archive", s(&root), "-o", output, "--span-mib", "1"];
        args.extend_from_slice(extra);
        let out = clip_env(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "clip {args:?} failed:\n{stderr}");
        stderr
    }

    fn assert_equal(&self, other: &Path) {
        assert_trees_equal(&self.tree, &snapshot(other), CompareOpts::default());
    }
}

/// An S3 server with the test bucket, and a proxy in front of it that counts and breaks requests.
struct S3 {
    server: S3Server,
    proxy: Proxy,
}

impl S3 {
    fn start() -> S3 {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        let proxy = Proxy::start(&server.addr(), ProxyConfig::default());
        S3 { server, proxy }
    }

    /// Environment reaching moto directly.
    fn direct(&self) -> Vec<(String, String)> {
        self.server.env()
    }

    /// Environment reaching moto through the proxy.
    fn proxied(&self) -> Vec<(String, String)> {
        self.server.env_for(&self.proxy.addr())
    }

    /// Body bytes of GETs whose range starts at or after `from` (the data section), and of all GETs.
    fn get_bytes(&self, from: u64) -> (u64, u64) {
        let log = self.proxy.stats().log;
        let gets = log.iter().filter(|r| r.method == "GET");
        let (mut data, mut all) = (0, 0);
        for r in gets {
            all += r.body_bytes;
            if range_start(r.range.as_deref()) >= from {
                data += r.body_bytes;
            }
        }
        (data, all)
    }
}

fn url(key: &str) -> String {
    format!("s3://{BUCKET}/{key}")
}

fn range_start(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `inspect --json` of an archive.
fn inspect(location: &str, env: &[(String, String)]) -> serde_json::Value {
    serde_json::from_slice(&clip_ok_env(&["inspect", "--json", location], env)).unwrap()
}

/// Offset of the DATA section of the archive at `location`.
fn data_offset(location: &str, env: &[(String, String)]) -> u64 {
    let v = inspect(location, env);
    v["sections"].as_array().unwrap().iter().find(|s| s["id"] == "DATA").expect("a DATA section")["offset"]
        .as_u64()
        .unwrap()
}

fn read_eio(path: &Path) -> bool {
    match std::fs::read(path) {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(common::EIO), "{}: expected EIO, got {e}", path.display());
            true
        }
    }
}

#[rstest]
#[case::raw(&[])]
#[case::zstd(&["--compress"])]
fn local_archive_extracts_and_mounts_identical_to_the_source(#[case] flags: &[&str]) {
    let fx = Fixture::new();
    let out = fx.path("a.clip");
    let stderr = fx.archive(s(&out), flags, &[]);
    assert!(stderr.contains("MB/s"), "no throughput in: {stderr}");

    // Deterministic: the same tree gives the same bytes.
    let again = fx.path("b.clip");
    fx.archive(s(&again), flags, &[]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap(), "archive is not deterministic");

    let info = inspect(s(&out), &[]);
    assert_eq!(info["kind"], "data-carrying");
    let layer = &info["meta"]["layers"][0];
    assert_eq!(layer["compression"], if flags.is_empty() { "none" } else { "zstd" });
    assert!(layer["span_count"].as_u64().unwrap() >= 3, "{layer}");

    clip_ok(&["extract", s(&out), s(&fx.path("extracted"))]);
    fx.assert_equal(&fx.path("extracted"));

    // A metadata copy of a local archive reads its data from there.
    let (full, copy) = (fx.path("full.clip"), fx.path("copy.clip"));
    fx.archive(s(&full), &[flags, &["--index-out", s(&copy)]].concat(), &[]);
    assert_eq!(inspect(s(&copy), &[])["meta"]["data_location"], s(&full));
    clip_ok(&["extract", s(&copy), s(&fx.path("from-copy"))]);
    fx.assert_equal(&fx.path("from-copy"));

    let cache = fx.path("cache");
    let m = MountProc::start(&out, &fx.path("mnt"), &["--cache-dir", s(&cache)]);
    fx.assert_equal(&m.dir);
    assert_eq!(
        std::fs::read(m.dir.join(ROOTFS_BIG_FILE)).unwrap(),
        std::fs::read(fx.root().join(ROOTFS_BIG_FILE)).unwrap()
    );
    m.stop();
}

#[test]
fn s3_archive_and_its_metadata_copy_extract_and_mount_identical_to_the_source() {
    let fx = Fixture::new();
    let s3 = S3::start();
    let env = s3.direct();
    let meta = fx.path("meta.clip");
    // The archive is staged in TMPDIR, uploaded, and removed.
    let tmp = fx.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut staged_env = env.clone();
    staged_env.push(("TMPDIR".into(), s(&tmp).into()));
    let stderr = fx.archive(&url("rootfs.clip"), &["--compress", "--index-out", s(&meta)], &staged_env);
    assert!(stderr.contains("MB/s") && stderr.contains("metadata copy"), "{stderr}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "staging files left in TMPDIR");

    let full = inspect(&url("rootfs.clip"), &env);
    let copy = inspect(s(&meta), &env);
    assert_eq!(copy["meta"]["data_location"], url("rootfs.clip"));
    assert!(copy["file_size"].as_u64().unwrap() < 64 << 10, "{copy}");
    assert!(full["file_size"].as_u64().unwrap() > BIG_LEN as u64 / 2, "{full}");

    let ls = String::from_utf8(clip_ok_env(&["ls", &url("rootfs.clip"), "/lib"], &env)).unwrap();
    assert_eq!(ls, "abs\ndangling\nrel\n");
    let passwd = clip_ok_env(&["cat", s(&meta), "/etc/passwd"], &env);
    assert_eq!(passwd, std::fs::read(fx.root().join("etc/passwd")).unwrap());

    clip_ok_env(&["extract", &url("rootfs.clip"), s(&fx.path("from-s3"))], &env);
    fx.assert_equal(&fx.path("from-s3"));

    let cache = fx.path("cache");
    let m = MountProc::start_env(url("rootfs.clip").as_ref(), &fx.path("mnt-s3"), &["--cache-dir", s(&cache)], &env);
    fx.assert_equal(&m.dir);
    m.stop();
    let m = MountProc::start_env(meta.as_os_str(), &fx.path("mnt-copy"), &["--no-cache"], &env);
    fx.assert_equal(&m.dir);
    m.stop();

    // `push` of a local archive: the same tree from the pushed object.
    let local = fx.path("local.clip");
    fx.archive(s(&local), &[], &[]);
    let pushed = String::from_utf8(clip_env(&["push", s(&local), &url("pushed.clip")], &env).stderr).unwrap();
    assert!(pushed.contains("pushed"), "{pushed}");
    clip_ok_env(&["extract", &url("pushed.clip"), s(&fx.path("pushed"))], &env);
    fx.assert_equal(&fx.path("pushed"));
}

/// A tree of `files` files of `size` pseudo-random bytes each, plus `small.txt`.
fn wide_tree(dir: &Path, files: usize, size: usize) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(format!("f{i:02}.bin")), pseudo_random_bytes(i as u64, size)).unwrap();
    }
    let small = b"a small file between big ones\n".to_vec();
    std::fs::write(dir.join("f05-small.txt"), &small).unwrap();
    small
}

#[test]
fn mounting_from_s3_downloads_the_metadata_and_only_the_spans_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let small = wide_tree(&root, 12, 3 << 20);
    let s3 = S3::start();
    clip_ok_env(&["archive", s(&root), "-o", &url("wide.clip"), "--span-mib", "1"], &s3.direct());
    let info = inspect(&url("wide.clip"), &s3.direct());
    let (archive_size, mounted) = (info["file_size"].as_u64().unwrap(), info["mounted_size"].as_u64().unwrap());
    let data_start = data_offset(&url("wide.clip"), &s3.direct());

    s3.proxy.reset_stats();
    let env = s3.proxied();
    let m = MountProc::start_env(url("wide.clip").as_ref(), &dir.path().join("mnt"), &["--no-cache"], &env);
    let (_, at_mount) = s3.get_bytes(data_start);
    assert!(at_mount <= mounted.max(64 << 10), "mount fetched {at_mount} bytes; the metadata is {mounted}");
    assert_eq!(std::fs::read(m.dir.join("f05-small.txt")).unwrap(), small);
    m.stop();
    let (data, all) = s3.get_bytes(data_start);
    assert!(data > 0 && data <= 2 * SPAN, "reading one small file fetched {data} data bytes");
    assert!(all <= 2 * SPAN + mounted.max(64 << 10), "{all} bytes in all");
    assert!(all * 10 < archive_size, "{all} of {archive_size} bytes fetched: not lazy");
}

#[test]
fn s3_spans_are_cached_across_mounts_and_refetched_without_a_cache() {
    let fx = Fixture::new();
    let s3 = S3::start();
    fx.archive(&url("cache.clip"), &["--compress"], &s3.direct());
    let data_start = data_offset(&url("cache.clip"), &s3.direct());
    let env = s3.proxied();
    let cache = fx.path("cache");
    let mount = |name: &str, extra: &[&str]| {
        s3.proxy.reset_stats();
        let m = MountProc::start_env(url("cache.clip").as_ref(), &fx.path(name), extra, &env);
        fx.assert_equal(&m.dir);
        m.stop();
        s3.get_bytes(data_start).0
    };
    let miss = mount("one", &["--cache-dir", s(&cache)]);
    assert!(miss > 0, "a cold cache fetched no data");
    assert_eq!(mount("two", &["--cache-dir", s(&cache)]), 0, "a warm cache still fetched data from S3");
    let first = mount("three", &["--no-cache"]);
    let second = mount("four", &["--no-cache"]);
    assert!(first > 0 && second > 0, "without a cache every mount fetches ({first}, {second})");
}

#[rstest]
#[case::raw(&[])]
#[case::zstd(&["--compress"])]
fn odd_and_concurrent_reads_through_an_s3_mount_are_exact(#[case] flags: &[&str]) {
    let fx = Fixture::new();
    let s3 = S3::start();
    fx.archive(&url("reads.clip"), flags, &s3.direct());
    let m = MountProc::start_env(url("reads.clip").as_ref(), &fx.path("mnt"), &["--no-cache"], &s3.proxied());
    let want = std::fs::read(fx.root().join(ROOTFS_BIG_FILE)).unwrap();
    let big = std::fs::File::open(m.dir.join(ROOTFS_BIG_FILE)).unwrap();
    let n = want.len() as u64;
    for (offset, len) in [
        (1u64, 1usize),
        (4095, 3),
        (SPAN - 7, 13),
        (SPAN, 1),
        (2 * SPAN - 1, 70_001),
        (n - 5, 64),
        (n, 10),
        (n + 99, 1),
    ] {
        let mut buf = vec![0u8; len];
        let got = big.read_at(&mut buf, offset).unwrap();
        let start = offset.min(n) as usize;
        let end = (offset + len as u64).min(n) as usize;
        assert_eq!(&buf[..got], &want[start..end], "read of {len} at {offset}");
    }

    // Many threads at once: random ranges of the big file and whole small files.
    std::thread::scope(|scope| {
        for t in 0..32u64 {
            let (dir, want, tree) = (&m.dir, &want, &fx.tree);
            scope.spawn(move || {
                let f = std::fs::File::open(dir.join(ROOTFS_BIG_FILE)).unwrap();
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..20 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let offset = x % n;
                    let len = (x >> 40) as usize % (300 << 10) + 1;
                    let mut buf = vec![0u8; len];
                    let got = f.read_at(&mut buf, offset).unwrap();
                    let end = (offset as usize + len).min(want.len());
                    assert_eq!(&buf[..got], &want[offset as usize..end], "thread {t}: {len} at {offset}");
                }
                let mut notes = String::new();
                std::fs::File::open(dir.join("home/user/notes")).unwrap().read_to_string(&mut notes).unwrap();
                assert_eq!(notes, "my notes\n");
                assert_eq!(tree.node(ROOTFS_HARD_LINKS[2]).size, Some(23));
                assert_eq!(std::fs::read(dir.join(ROOTFS_HARD_LINKS[2])).unwrap(), b"one inode, three names\n");
            });
        }
    });
    m.stop();
}

#[test]
fn s3_server_errors_give_eio_to_readers_and_the_mount_survives() {
    let fx = Fixture::new();
    let mut s3 = S3::start();
    fx.archive(&url("faulty.clip"), &[], &s3.direct());
    let mut m = MountProc::start_env(url("faulty.clip").as_ref(), &fx.path("mnt"), &["--no-cache"], &s3.proxied());

    s3.proxy.set_faults(vec![Fault::new(FaultKind::Status(503))]);
    assert!(read_eio(&m.dir.join("etc/passwd")), "a failing S3 must give EIO");
    assert!(read_eio(&m.dir.join(ROOTFS_BIG_FILE)));
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none(), "clip mount died on S3 errors");
    // Metadata needs no S3: listing and stat still work.
    assert!(std::fs::read_dir(m.dir.join("lib")).unwrap().count() == 3);

    s3.proxy.set_faults(vec![]);
    // A span whose lookup just failed keeps failing for the store's hold-off (1 s at most), then reads again.
    common::wait_within(std::time::Duration::from_secs(10), "the file did not read again after the hold-off", || {
        std::fs::read(m.dir.join("etc/passwd")).is_ok()
    });
    assert_eq!(std::fs::read(m.dir.join("etc/passwd")).unwrap(), std::fs::read(fx.root().join("etc/passwd")).unwrap());

    s3.server.kill();
    // The big file's first spans were never fetched (the 503s above).
    assert!(read_eio(&m.dir.join(ROOTFS_BIG_FILE)), "a dead S3 must give EIO");
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none(), "clip mount died when S3 went away");
    // What was read before is still served from memory.
    assert_eq!(std::fs::read(m.dir.join("etc/passwd")).unwrap(), std::fs::read(fx.root().join("etc/passwd")).unwrap());
    m.stop();

    // The CLI says what failed and what to check.
    let err = clip_fails_env(&["cat", &url("faulty.clip"), "/etc/passwd"], &s3.proxied(), "is the S3 endpoint");
    assert!(err.contains(&url("faulty.clip")), "{err}");
}

#[test]
fn missing_objects_bad_data_and_unknown_kinds_are_clear_errors() {
    let fx = Fixture::new();
    let s3 = S3::start();
    let env = s3.direct();
    for cmd in
        [&["ls", &url("missing.clip")][..], &["inspect", &url("missing.clip")], &["cat", &url("missing.clip"), "/x"]]
    {
        clip_fails_env(cmd, &env, "s3://clip-e2e/missing.clip not found (check the bucket and key");
    }
    clip_fails_env(&["ls", "s3://no-such-bucket/x.clip"], &env, "not found");
    // A malformed location is a usage error (clap's exit code 2).
    let out = clip_env(&["ls", "s3://clip-e2e"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no key after the bucket (expected s3://BUCKET/KEY)"), "{err}");
    // A mount of a missing object fails before mounting.
    let mnt = fx.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    clip_fails_env(&["mount", &url("missing.clip"), s(&mnt)], &env, "not found");

    s3.server.put_object(BUCKET, "junk.clip", b"this is not an archive at all, just some bytes");
    clip_fails_env(&["ls", &url("junk.clip")], &env, "not a .clip file");
    clip_fails_env(&["push", "/etc/hostname", &url("x.clip")], &env, "not a readable .clip file");

    // An unknown kind in an otherwise valid header (checksum fixed up), locally and in S3.
    let good = fx.path("good.clip");
    fx.archive(s(&good), &[], &[]);
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[10..12].copy_from_slice(&7u16.to_le_bytes());
    let crc = crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    let bad = fx.path("kind7.clip");
    std::fs::write(&bad, &bytes).unwrap();
    clip_fails(&["inspect", s(&bad)], "unknown archive kind 7");
    clip_fails(&["extract", s(&bad), s(&fx.path("x"))], "unknown archive kind 7");
    s3.server.put_object(BUCKET, "kind7.clip", &bytes);
    clip_fails_env(&["mount", &url("kind7.clip"), s(&mnt)], &env, "unknown archive kind 7");

    // A metadata copy whose data location now holds another tree.
    let meta = fx.path("meta.clip");
    fx.archive(&url("moving.clip"), &["--index-out", s(&meta)], &env);
    let other = fx.path("other");
    wide_tree(&other, 1, 1000);
    clip_ok_env(&["archive", s(&other), "-o", &url("moving.clip")], &env);
    clip_fails_env(
        &["cat", s(&meta), "/etc/passwd"],
        &env,
        "does not belong to the archive at s3://clip-e2e/moving.clip",
    );
}

#[test]
fn bad_credentials_are_refused_with_a_hint_and_never_printed() {
    let fx = Fixture::new();
    let s3 = S3Server::start_with_auth(&[BUCKET]);
    let good = s3.env();
    let meta = fx.path("meta.clip");
    fx.archive(&url("auth.clip"), &["--index-out", s(&meta)], &good);
    clip_ok_env(&["extract", &url("auth.clip"), s(&fx.path("ok"))], &good);
    fx.assert_equal(&fx.path("ok"));

    let secret = "wrong-secret-do-not-print";
    let mut bad = good.clone();
    for (k, v) in &mut bad {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = secret.into();
        }
    }
    for cmd in [&["ls", &url("auth.clip")][..], &["cat", s(&meta), "/etc/passwd"]] {
        let err = clip_fails_env(cmd, &bad, "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY");
        assert!(!err.contains(secret), "the secret was printed:\n{err}");
        assert!(err.contains("access denied"), "{err}");
    }
    let mut unknown = good.clone();
    for (k, v) in &mut unknown {
        if k == "AWS_ACCESS_KEY_ID" {
            *v = "AKIANOSUCHKEY0000000".into();
        }
    }
    clip_fails_env(&["archive", s(&fx.root()), "-o", &url("denied.clip")], &unknown, "access denied");
}

/// CRC-32C (Castagnoli), as the .clip header uses.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// The Debian bookworm + python3 image of `dev/debian-image`, unpacked by umoci into a real root filesystem.
fn debian_rootfs() -> Unpacked {
    umoci_unpack(&common::debian_layout(), "bookworm")
}

#[test]
fn debian_rootfs_archived_to_s3_extracts_and_mounts_identical() {
    let debian = debian_rootfs();
    let root = debian.rootfs();
    let tree = snapshot(&root);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let env = s3.direct();
    let meta = dir.path().join("meta.clip");
    let out = clip_env(&["archive", s(&root), "-o", &url("debian.clip"), "--compress", "--index-out", s(&meta)], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("MB/s"), "{stderr}");

    clip_ok_env(&["extract", &url("debian.clip"), s(&dir.path().join("extracted"))], &env);
    assert_trees_equal(&tree, &snapshot(&dir.path().join("extracted")), CompareOpts::default());
    let m = MountProc::start_env(meta.as_os_str(), &dir.path().join("mnt"), &["--no-cache"], &env);
    assert_trees_equal(&tree, &snapshot(&m.dir), CompareOpts::default());
    m.stop();
}
