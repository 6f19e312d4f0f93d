//! End to end: `clip mount` of images in a real registry, read through a real FUSE mount, compared with
//! `umoci unpack`; the disk cache across mounts; concurrency; passthrough; metrics (`kill -9` during fetches:
//! tests/faults.rs).

mod common;

use std::path::Path;

use clip_testkit::*;
use common::{metric, s, tar_file, tar_files, Served};
use rstest::rstest;

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::uncompressed(Compression::None)]
fn mounted_conformance_image_equals_umoci(#[case] compression: Compression) {
    let img = Served::new(&conformance_image(compression));
    let m = img.mount("mnt", &[]);
    assert_matches_umoci(img.layout.path(), "t", &m.dir, CompareOpts::conformance());
    let log = m.stop();
    assert!(log.contains("mounted"), "{log}");
    assert!(log.contains("unmounted"), "{log}");
    // Every layer holding file bytes was read (the tree comparison hashed every file): each is logged once.
    let archive = clip_format::Archive::open(&img.index()).unwrap();
    let mut layers: Vec<clip_format::LayerIndex> = (0..archive.node_count())
        .filter_map(|i| archive.node(clip_format::Ino::from_index(i)).unwrap().data_ref())
        .filter(|d| d.size > 0)
        .map(|d| d.layer)
        .collect();
    layers.sort_unstable();
    layers.dedup();
    assert_eq!(log.matches("layer first touched").count(), layers.len(), "{log}");
    drop(img.registry);
}

#[test]
fn second_mount_reads_everything_from_the_cache() {
    let img = Served::new(&conformance_image(Compression::Gzip));
    let first = img.mount("one", &[]);
    let tree = snapshot(&first.dir);
    assert!(img.proxy().stats().blob_bytes > 0, "the first mount read no blob bytes");
    first.stop();

    // Counted where the bytes would come from: the proxy in front of the registry.
    img.proxy().reset_stats();
    let second = img.mount("two", &[]);
    assert_trees_equal(&tree, &snapshot(&second.dir), CompareOpts::default());
    let stats = img.proxy().stats();
    let log = second.stop();
    assert_eq!((stats.blob_requests, stats.blob_bytes), (0, 0), "second mount fetched from the registry: {log}");
}

/// Reads `path` under the mount in 64 threads at once and checks every byte.
fn read_concurrently(path: &Path, expected: &[u8], threads: usize) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let got = std::fs::read(path).unwrap_or_else(|e| panic!("thread {t}: reading {}: {e}", path.display()));
                assert!(got == expected, "thread {t}: wrong bytes from {}", path.display());
            });
        }
    });
}

#[test]
fn concurrent_cold_readers_share_one_fetch_per_span() {
    let layer = big_gzip_layer(24);
    let tar = layer.tar().to_vec();
    let img = Served::new(&Image::new(vec![layer]));
    let addr = common::free_addr();
    let m = img.mount("mnt", &["--metrics", &addr]);
    // The 8 MiB file crosses several spans.
    let (path, off, size) = tar_file(&tar, |p| p.ends_with("/f00007"));
    let expected = &tar[off as usize..(off + size) as usize];
    read_concurrently(&m.dir.join(&path), expected, 64);

    let archive = clip_format::Archive::open(&img.index()).unwrap();
    let node = archive.node(archive.resolve(path.as_bytes()).unwrap().unwrap()).unwrap();
    let d = node.data_ref().unwrap();
    let first = archive.find_span(d.layer, d.offset).unwrap();
    let last = archive.find_span(d.layer, d.offset + d.size - 1).unwrap();
    let spans = clip_format::SpanIds::through(first, last).len() as f64;
    assert!(spans >= 2.0);
    let fetched = metric(&addr, "clip_spans_fetched_total");
    // Readahead may fetch up to two spans past the file; never a span twice.
    assert!(fetched >= spans && fetched <= spans + 2.0, "{fetched} span fetches for a file over {spans} spans");
    m.stop();
}

#[test]
fn cache_size_bound_is_respected() {
    let layer = big_gzip_layer(24);
    let img = Served::new(&Image::new(vec![layer]));
    let m = img.mount("mnt", &["--cache-size", "6M"]);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat {}/big/*/* > /dev/null", m.dir.display()))
        .status()
        .unwrap();
    assert!(status.success());
    m.stop();
    let used = dir_size(&img.cache());
    // One span (4 MiB) may be in flight past the bound while eviction catches up.
    assert!(used <= (6 << 20) + (4 << 20) + (1 << 20), "cache holds {used} bytes for a 6 MiB bound");
    assert!(used > 0, "nothing was cached");
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

#[test]
fn fully_cached_file_is_served_by_passthrough() {
    let layer = big_gzip_layer(8);
    let tar = layer.tar().to_vec();
    let img = Served::new(&Image::new(vec![layer]));
    let addr = common::free_addr();
    let m = img.mount("mnt", &["--metrics", &addr]);
    let (path, off, size) = tar_file(&tar, |p| p.ends_with("/f00000"));
    let expected = &tar[off as usize..(off + size) as usize];
    let file = m.dir.join(&path);
    assert_eq!(std::fs::read(&file).unwrap(), expected); // cold: through FUSE reads, fills the cache
                                                         // Drop the kernel's page cache for the file so the next read must ask someone.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let reads_before = metric(&addr, "clip_fuse_requests_total{op=\"read\"}");
    assert_eq!(std::fs::read(&file).unwrap(), expected);
    let reads_after = metric(&addr, "clip_fuse_requests_total{op=\"read\"}");
    assert!(metric(&addr, "clip_fuse_passthrough_opens_total") >= 1.0, "no passthrough open");
    assert_eq!(reads_before, reads_after, "a passthrough file's reads reached the daemon");
    m.stop();
}

#[test]
fn passthrough_comes_back_once_a_recording_ends() {
    let layer = big_gzip_layer(8);
    let tar = layer.tar().to_vec();
    let img = Served::new(&Image::new(vec![layer]));
    let (path, off, size) = tar_file(&tar, |p| p.ends_with("/f00000"));
    let expected = &tar[off as usize..(off + size) as usize];
    // Opens the file three times under a recording mount; the passthrough opens it got.
    let passthrough_opens = |name: &str, limits: &[&str]| {
        let addr = common::free_addr();
        let profile = img.dir.path().join(format!("{name}.json"));
        let mut args = vec!["--metrics", &addr, "--record-profile", s(&profile)];
        args.extend_from_slice(limits);
        let m = img.mount(name, &args);
        for _ in 0..3 {
            assert_eq!(std::fs::read(m.dir.join(&path)).unwrap(), expected);
        }
        let opens = metric(&addr, "clip_fuse_passthrough_opens_total");
        m.stop();
        opens
    };
    assert_eq!(passthrough_opens("unbounded", &[]), 0.0, "a passthrough open while recording");
    assert!(passthrough_opens("bounded", &["--record-spans", "1"]) >= 1.0, "no passthrough once the recording ended");
}

#[test]
fn ioctls_answer_enotty_without_a_warning() {
    let mut l = LayerBuilder::new();
    l.file("hello", b"hello\n".to_vec());
    let img = Served::new(&Image::new(vec![Layer::new(l.finish(), Compression::Gzip)]));
    // What every Python open() does: isatty() is a TCGETS ioctl on the file. Then an ioctl that is not a
    // terminal's (FS_IOC_GETFLAGS), twice. Each must fail with ENOTTY, as on a regular file.
    let script = "
import errno, fcntl, os, sys, termios
fd = os.open(sys.argv[1], os.O_RDONLY)
for cmd in (termios.TCGETS, 0x80086601, 0x80086601):
    try:
        fcntl.ioctl(fd, cmd, bytes(64))
        print('answered')
    except OSError as e:
        print(errno.errorcode[e.errno])
print(os.isatty(fd))";
    let ioctls = |m: &common::MountProc| {
        let out = std::process::Command::new("python3").args(["-c", script]).arg(m.dir.join("hello")).output().unwrap();
        let words: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        assert_eq!(words, ["ENOTTY", "ENOTTY", "ENOTTY", "False"], "{out:?}");
    };
    let m = img.mount("mnt", &[]);
    ioctls(&m);
    let log = m.stop();
    assert!(!log.contains("Not Implemented") && !log.contains("ioctl"), "the mount logged ioctls: {log}");

    // At debug, the first ioctl that is not a terminal's is logged, once.
    let cache = img.cache();
    let debug = [("CLIP_LOG".to_string(), "info,clip_fs=debug".to_string())];
    let dir = img.dir.path().join("debug");
    let m = common::MountProc::start_env(img.index().as_os_str(), &dir, &["--cache-dir", common::s(&cache)], &debug);
    ioctls(&m);
    let log = m.stop();
    assert_eq!(log.matches("ioctl not supported").count(), 1, "{log}");
    assert!(log.contains("0x80086601"), "{log}");
}

#[test]
fn writes_are_refused_and_sigterm_unmounts() {
    let img = Served::new(&conformance_image(Compression::Gzip));
    let m = img.mount("mnt", &[]);
    let err = std::fs::write(m.dir.join("newfile"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected, got {err}");
    let log = m.stop();
    assert!(log.contains("fetched"), "no summary on exit: {log}");
}

#[test]
fn prefetch_fills_the_cache_in_the_background() {
    let layer = big_gzip_layer(12);
    let tar = layer.tar().to_vec();
    let img = Served::new(&Image::new(vec![layer]));
    let addr = common::free_addr();
    let m = img.mount("mnt", &["--prefetch", "--metrics", &addr]);
    let spans = clip_format::Archive::open(&img.index()).unwrap().span_count() as f64;
    common::wait_within(
        std::time::Duration::from_secs(60),
        &format!("prefetch did not load all {spans} spans"),
        || metric(&addr, "clip_prefetched_spans_total") >= spans,
    );
    // Everything is cached now: reading every file fetches nothing more.
    let fetched = metric(&addr, "clip_spans_fetched_total");
    for (path, off, size) in tar_files(&tar) {
        assert!(std::fs::read(m.dir.join(&path)).unwrap() == tar[off as usize..(off + size) as usize], "{path}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reads after a full prefetch fetched spans");
    m.stop();
}

/// `find` of two big directories: the walk gets names only for the second one's later batches (the kernel
/// builds no inode for them); a walk that then stats every file looks those names up and gets the
/// attributes `umoci unpack` gives, as it does for the names that came with full entries.
#[test]
fn a_walk_that_reads_names_only_gets_names_only_and_a_stat_walk_gets_umocis_attributes() {
    let mut l = LayerBuilder::new();
    for dir in ["a", "b"] {
        for i in 0..1500u32 {
            l.file(format!("{dir}/f{i:04}"), vec![b'x'; (i % 97) as usize]);
        }
    }
    let image = Image::new(vec![Layer::new(l.finish(), Compression::Gzip)]);
    let served = Served::new(&image);
    let addr = common::free_addr();
    let m = served.mount("mnt", &["--metrics", &addr]);
    let find = |root: &Path, printf: &[&str]| {
        let out = std::process::Command::new("find").arg(root).args(printf).output().unwrap();
        assert!(out.status.success(), "find: {}", String::from_utf8_lossy(&out.stderr));
        let mut lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
        lines.sort();
        lines
    };
    let lookups = || metric(&addr, "clip_fuse_requests_total{op=\"lookup\"}");

    assert_eq!(find(&m.dir, &[]).len(), 3003, "the root, a/, b/ and 3000 files");
    assert!(metric(&addr, "clip_fuse_readdirplus_names_only_total") >= 1.0, "no batch was names only");
    assert!(lookups() <= 3.0, "a names-only walk looked up {} entries", lookups());

    let unpacked = umoci_unpack(served.layout.path(), "t");
    let printf = ["-type", "f", "-printf", "%P %s %m %U %G %T@\n"];
    let (ours, theirs) = (find(&m.dir, &printf), find(&unpacked.rootfs(), &printf));
    let differ: Vec<_> = ours.iter().zip(&theirs).filter(|(a, b)| a != b).take(3).collect();
    assert!(ours.len() == 3000 && ours.len() == theirs.len() && differ.is_empty(), "a stat walk differs: {differ:?}");
    assert!(lookups() >= 100.0, "no name given names only was looked up: the test proves nothing");
    m.stop();
}
