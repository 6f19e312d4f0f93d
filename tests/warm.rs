//! End to end: what a mount keeps per file, and a fresh mount over a warm cache. Per-inode state lives only
//! while a file is open (the `clip_fuse_open_inodes` gauge returns to 0 after any number of opens); the
//! disk cache's files are sealed once verified and synced, so a fresh mount serves small files by range
//! from their span files and hands cached big files to passthrough without hashing anything again; and it
//! reads the startup set, and what an opened program loads, from the disk cache into the page cache before
//! anything asks.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use clip_testkit::*;
use common::{cache_files, metric, wait_within, Served};

/// Files of the test image: many small ones (served from spans) and a few of 100 KiB (passthrough copies).
fn image() -> (Image, Vec<(String, Vec<u8>)>) {
    let mut l = LayerBuilder::new();
    let mut files = Vec::new();
    for i in 0..300u32 {
        let size = if i % 100 == 7 { 100 << 10 } else { 10 + (i as usize % 50) * 37 };
        let data: Vec<u8> = (0..size).map(|k| (k as u32).wrapping_mul(31).wrapping_add(i) as u8).collect();
        let path = format!("d{}/f{i:03}", i % 3);
        l.file(path.clone(), data.clone());
        files.push((path, data));
    }
    (Image::new(vec![Layer::new(l.finish(), Compression::Gzip)]), files)
}

#[test]
fn per_inode_state_lives_only_while_a_file_is_open() {
    let (image, files) = image();
    let img = Served::new(&image);
    let addr = common::free_addr();
    let m = img.mount("mnt", &["--metrics", &addr]);
    let open_inodes = || metric(&addr, "clip_fuse_open_inodes");
    assert_eq!(open_inodes(), 0.0);

    // Every file open at once, the first ten twice: one state per inode.
    let open = |path: &str| std::fs::File::open(m.dir.join(path)).unwrap();
    let handles: Vec<_> = files.iter().map(|(path, _)| open(path)).collect();
    let seconds: Vec<_> = files.iter().take(10).map(|(path, _)| open(path)).collect();
    assert_eq!(open_inodes(), files.len() as f64);
    // Closing a second handle keeps the inode's state; the kernel sends each release after close returns.
    drop(seconds);
    wait_within(Duration::from_secs(10), "releases of the second handles", || {
        metric(&addr, "clip_fuse_requests_total{op=\"release\"}") >= 10.0
    });
    assert_eq!(open_inodes(), files.len() as f64);
    drop(handles);
    wait_within(Duration::from_secs(10), "per-inode state released after the last close", || open_inodes() == 0.0);

    // Opened and read one after another, many times over: nothing accumulates.
    for round in 0..3 {
        for (path, data) in &files {
            assert!(std::fs::read(m.dir.join(path)).unwrap() == *data, "round {round}: {path}");
        }
    }
    wait_within(Duration::from_secs(10), "per-inode state released after reads", || open_inodes() == 0.0);
    m.stop();
}

#[test]
fn a_fresh_mount_over_a_sealed_cache_reads_small_files_by_range() {
    let (image, files) = image();
    let img = Served::new(&image);
    let first = img.mount("one", &[]);
    for (path, data) in &files {
        assert!(std::fs::read(first.dir.join(path)).unwrap() == *data, "{path}");
    }
    // A second open of a cached 100 KiB file makes its passthrough copy.
    for (path, data) in files.iter().filter(|(_, d)| d.len() >= 64 << 10) {
        assert!(std::fs::read(first.dir.join(path)).unwrap() == *data, "{path}");
    }
    first.stop();
    let cached: Vec<_> = cache_files(&img.cache());
    assert!(cached.iter().any(|p| p.starts_with(img.cache().join("files"))), "no passthrough copies: {cached:?}");
    // Sealed in the background: verified and synced, so read-only.
    wait_within(Duration::from_secs(10), "cache files sealed (mode 0400)", || {
        cache_files(&img.cache()).iter().all(|p| common::mode(p) & 0o777 == 0o400)
    });

    img.proxy().reset_stats();
    let addr = common::free_addr();
    let second = img.mount("two", &["--metrics", &addr]);
    for (path, data) in &files {
        assert!(std::fs::read(second.dir.join(path)).unwrap() == *data, "{path}");
    }
    let stats = img.proxy().stats();
    assert_eq!((stats.blob_requests, stats.blob_bytes), (0, 0), "the warm mount went to the registry");
    // Each small file was one read by range of its span file: none loaded a span into memory, and the
    // first read of every span did not hash it (a sealed file is trusted).
    let small = files.iter().filter(|(_, d)| d.len() < 64 << 10).count() as f64;
    assert!(metric(&addr, "clip_cache_disk_hits_total") >= small, "small files not read from the span files");
    assert_eq!(metric(&addr, "clip_cache_memory_hits_total"), 0.0, "spans were loaded into memory");
    assert!(metric(&addr, "clip_fuse_passthrough_opens_total") >= 1.0, "no passthrough from the sealed copies");
    second.stop();

    // A span file that lost its seal (as a crash before the sync leaves it) is hashed again before use.
    for p in cache_files(&img.cache()) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let third = img.mount("three", &[]);
    for (path, data) in files.iter().take(20) {
        assert!(std::fs::read(third.dir.join(path)).unwrap() == *data, "{path}");
    }
    third.stop();
    wait_within(Duration::from_secs(10), "hashed span files sealed again", || {
        cache_files(&img.cache().join("spans")).iter().any(|p| common::mode(p) & 0o777 == 0o400)
    });
}

/// Bytes of `files` in the page cache (`fincore`).
fn resident(files: &[std::path::PathBuf]) -> u64 {
    if files.is_empty() {
        return 0;
    }
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .args(files)
        .output()
        .expect("running fincore");
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse::<u64>().expect("fincore's RES")).sum()
}

/// Drops `files` from the page cache (`dd iflag=nocache count=0`: the whole file).
fn drop_from_page_cache(files: &[std::path::PathBuf]) {
    for f in files {
        let status = std::process::Command::new("dd")
            .args([format!("if={}", f.display()), "iflag=nocache".into(), "count=0".into(), "status=none".into()])
            .status()
            .expect("running dd");
        assert!(status.success(), "dropping {} from the page cache", f.display());
    }
    assert_eq!(resident(files), 0, "the cache files are still in the page cache");
}

#[test]
fn a_remount_over_a_warm_cache_reads_the_startup_set_and_an_opened_programs_libraries_into_the_page_cache() {
    let mut layer = LayerBuilder::new();
    for e in host_programs(&[("/bin/ls", "usr/bin/ls", 0o755)]) {
        layer.entry(e);
    }
    let mut image = Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]);
    image.config.entrypoint = Some(vec!["ls".into()]);
    let served = Served::new(&image);
    let libraries: Vec<String> = shared_libraries("/bin/ls").iter().map(|p| p.display().to_string()).collect();
    let size = |paths: &[String]| paths.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>();
    let (program, libraries_size) = (vec!["/usr/bin/ls".to_owned()], size(&libraries));

    // A first start fills the disk cache: each file read twice (the second open copies the big ones for
    // passthrough).
    let m = served.mount("fill", &[]);
    for path in program.iter().chain(&libraries) {
        for _ in 0..2 {
            assert!(std::fs::read(m.dir.join(&path[1..])).unwrap() == std::fs::read(path).unwrap(), "{path}");
        }
    }
    m.stop();
    let files = cache_files(&served.cache());

    // A remount reads the whole set in (the program, its loader and libraries) before anything reads it.
    drop_from_page_cache(&files);
    let addr = common::free_addr();
    let m = served.mount("mnt", &["--metrics", &addr]);
    wait_within(Duration::from_secs(30), "the startup set's files were not read in", || {
        metric(&addr, "clip_files_paged_in_total") >= (1 + libraries.len()) as f64
    });
    let set_size = size(&program) + libraries_size;
    wait_within(Duration::from_secs(30), "the startup set's bytes did not reach the page cache", || {
        resident(&files) >= set_size
    });
    let paged = metric(&addr, "clip_files_paged_in_total");
    let summary = m.stop();
    assert!(summary.contains(&format!("; {paged} files read ahead from the disk cache")), "{summary}");

    // Without the set, the program opened (handed to passthrough: the mount reads none of it) has what it
    // loads read in: its libraries, not opened yet.
    drop_from_page_cache(&files);
    let addr = common::free_addr();
    let m = served.mount("mnt2", &["--metrics", &addr, "--no-startup-set"]);
    let opens = metric(&addr, "clip_fuse_passthrough_opens_total");
    std::io::Read::read_exact(&mut std::fs::File::open(m.dir.join("usr/bin/ls")).unwrap(), &mut [0u8; 64]).unwrap();
    assert_eq!(metric(&addr, "clip_fuse_passthrough_opens_total"), opens + 1.0, "the program went to passthrough");
    wait_within(Duration::from_secs(30), "the program's libraries were not read in", || {
        metric(&addr, "clip_files_paged_in_total") >= libraries.len() as f64
    });
    wait_within(Duration::from_secs(30), "the libraries' bytes did not reach the page cache", || {
        resident(&files) >= libraries_size
    });
    assert_eq!(metric(&addr, "clip_fuse_requests_total{op=\"open\"}"), 1.0, "only the program was opened");
    m.stop();
}
