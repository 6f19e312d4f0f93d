//! End to end, reliability: `clip mount` of an image in a real registry reached through the fault-injecting
//! proxy of `clip-testkit`. Every fault the proxy can inject during a mount, a registry outage (blackholed,
//! failing, then gone altogether) with cached files working, uncached reads failing with EIO within the
//! read deadline and everything working again once the registry is back; `kill -9` while fetching and
//! corrupted cache files (never served); and a load test (64 readers at random offsets with 5 % of the
//! registry's answers broken).

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clip_testkit::*;
use common::{cache_files, clip_ok, metric, s, tar_files, MountProc, Served};

/// A layer of `count` files `NAME/fNN` of `size` pseudo-random bytes each; returns it with the files'
/// contents.
fn files_layer(name: &str, count: usize, size: usize, compression: Compression) -> (Layer, Vec<(String, Vec<u8>)>) {
    let mut l = LayerBuilder::new();
    l.dir(name);
    let files: Vec<(String, Vec<u8>)> =
        (0..count).map(|i| (format!("{name}/f{i:02}"), pseudo_random_bytes((i as u64 + 1) * 7919, size))).collect();
    for (path, data) in &files {
        l.file(path.as_str(), data.clone());
    }
    (Layer::new(l.finish(), compression), files)
}

/// Drops the kernel's clean page cache, so reads of a mounted file reach clip again.
fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("dropping the page cache (tests run as root)");
}

/// Reads a whole file; returns the result and how long it took.
fn timed_read(path: &Path) -> (std::io::Result<Vec<u8>>, Duration) {
    let started = Instant::now();
    let result = std::fs::read(path);
    (result, started.elapsed())
}

fn assert_alive(m: &mut MountProc) {
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the mount process died");
}

#[test]
fn every_fault_the_proxy_injects_is_survived_with_the_right_bytes() {
    let (layer, files) = files_layer("data", 24, 1 << 20, Compression::Gzip);
    let served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    let cdn = Proxy::start(&served.registry.addr(), ProxyConfig::default());
    let addr = common::free_addr();
    let mut m = served.mount("mnt", &["--metrics", &addr, "--read-timeout", "20"]);
    let kinds = [
        FaultKind::Status(500),
        FaultKind::Status(503),
        FaultKind::TooManyRequests { retry_after_secs: 1 },
        FaultKind::ResetMidBody { after_bytes: 50_000 },
        FaultKind::TruncateBody { after_bytes: 70_000 },
        FaultKind::DelayFirstByte(Duration::from_millis(500)),
        FaultKind::FlipBit { offset: 4321 },
        FaultKind::IgnoreRange,
        FaultKind::Unauthorized,
        FaultKind::Redirect { to: cdn.addr() },
    ];
    // Every other file, so that no span of a file read under one fault was loaded by the one before.
    for (kind, (path, data)) in kinds.iter().zip(files.iter().step_by(2)) {
        let injected = served.proxy().stats().faults_injected;
        served.proxy().set_faults(vec![Fault::new(kind.clone()).blobs_only().times(1)]);
        let (got, took) = timed_read(&m.dir.join(path));
        let got = got.unwrap_or_else(|e| panic!("{kind:?}: reading {path}: {e}"));
        assert!(got == *data, "{kind:?}: wrong bytes in {path}");
        assert_eq!(served.proxy().stats().faults_injected, injected + 1, "{kind:?} was not injected");
        if let FaultKind::TooManyRequests { .. } = kind {
            assert!(took >= Duration::from_secs(1), "Retry-After not honoured: {took:?}");
        }
        assert_alive(&mut m);
    }
    assert!(metric(&addr, "clip_verify_failures_total") >= 1.0, "the flipped bit went unnoticed");
    assert!(!cdn.stats().requests_to("/blobs/").is_empty(), "the redirect was not followed");
    assert_eq!(metric(&addr, "clip_fuse_read_errors_total"), 0.0);
    m.stop();
}

#[test]
fn indexing_survives_broken_connections_and_gives_the_same_index() {
    let (layer, _) = files_layer("data", 12, 1 << 20, Compression::Gzip);
    let served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    served.proxy().set_faults(vec![
        Fault::new(FaultKind::ResetMidBody { after_bytes: 2 << 20 }).blobs_only().times(1),
        Fault::new(FaultKind::Status(503)).blobs_only().times(1),
        Fault::new(FaultKind::TruncateBody { after_bytes: 3 << 20 }).blobs_only().times(1),
    ]);
    let again = served.dir.path().join("again.clip");
    clip_ok(&["index", &served.proxy().image_ref("img:t"), "-o", s(&again), "--span-mib", "1", "--no-reuse"]);
    assert_eq!(served.proxy().stats().faults_injected, 3);
    assert!(std::fs::read(&again).unwrap() == std::fs::read(served.index()).unwrap(), "a different index");
}

#[test]
fn registry_outage_cached_files_work_uncached_reads_fail_within_the_deadline_and_recover() {
    let (layer, files) = files_layer("data", 8, 1 << 20, Compression::Gzip);
    let mut served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    let addr = common::free_addr();
    let deadline = Duration::from_secs(2);
    let mut m = served.mount("mnt", &["--metrics", &addr, "--read-timeout", "2"]);
    let path = |i: usize| m.dir.join(&files[i].0);
    let (cached, uncached) = (path(0), path(4));
    assert!(std::fs::read(&cached).unwrap() == files[0].1);

    let outages: [(&str, Option<FaultKind>); 3] = [
        ("blackholed", Some(FaultKind::Blackhole)),
        ("failing", Some(FaultKind::Status(503))),
        ("gone", None), // the proxy stops: connections are refused
    ];
    for (what, fault) in outages {
        match fault {
            Some(kind) => served.proxy().set_faults(vec![Fault::new(kind)]),
            None => served.restart_proxy(None),
        }
        drop_page_cache();
        // The previous outage's failures fail reads at once for the hold-off (see clip-store): this outage is
        // timed from a clean slate, once the mount says no fetch is running and no span is held off any more.
        common::wait_within(HOLDOFF + 2 * deadline, "spans were still held off", || {
            metric(&addr, "clip_inflight_fetches") == 0.0 && metric(&addr, "clip_failing_spans") == 0.0
        });
        let (got, _) = timed_read(&cached);
        assert!(got.unwrap() == files[0].1, "{what}: a cached file failed");
        let (got, took) = timed_read(&uncached);
        let err = got.expect_err(&format!("{what}: an uncached read succeeded"));
        assert_eq!(err.raw_os_error(), Some(common::EIO), "{what}: {err}");
        assert!(took < deadline + Duration::from_millis(1500), "{what}: EIO after {took:?}");
        println!(
            "outage ({what}): cached file read fine, uncached read got EIO after {took:.2?} (deadline {deadline:?})"
        );
        assert_alive(&mut m);
    }

    // The registry is back on the same address: a read works, without remounting.
    served.restart_proxy(Some(ProxyConfig::default()));
    // Reads fail at once during the hold-off after the last failure, then go to the registry again.
    common::wait_within(HOLDOFF + 2 * deadline, "reads did not recover after the registry came back", || {
        let (got, took) = timed_read(&uncached);
        assert!(took < deadline + Duration::from_millis(500), "a read took {took:?}");
        got.is_ok_and(|bytes| bytes == files[4].1)
    });
    assert!(metric(&addr, "clip_fuse_read_errors_total") >= 3.0);
    m.stop();
}

#[test]
fn a_mount_starts_while_the_registry_is_down_serves_what_the_cache_holds_and_fetches_once_it_is_back() {
    let (layer, files) = files_layer("data", 8, 1 << 20, Compression::Gzip);
    let mut served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    let (cached, uncached) = (&files[0], &files[4]);
    let m = served.mount("fill", &[]);
    assert!(std::fs::read(m.dir.join(&cached.0)).unwrap() == cached.1);
    m.stop();

    // Down: the mount starts at once, says so, serves the cached file and fails the other read.
    served.restart_proxy(None);
    let mut m = served.mount("down", &["--read-timeout", "2"]);
    assert!(std::fs::read(m.dir.join(&cached.0)).unwrap() == cached.1, "a cached file, registry down");
    let err = std::fs::read(m.dir.join(&uncached.0)).expect_err("an uncached read succeeded with the registry down");
    assert_eq!(err.raw_os_error(), Some(common::EIO), "{err}");
    assert_alive(&mut m);

    // Back on the same address: the same mount fetches, without remounting.
    served.restart_proxy(Some(ProxyConfig::default()));
    common::wait_within(HOLDOFF + Duration::from_secs(4), "reads did not recover after the registry came back", || {
        std::fs::read(m.dir.join(&uncached.0)).is_ok_and(|bytes| bytes == uncached.1)
    });
    let log = m.stop();
    // A refused connection fails the check within its retries (under 2 s or over it, by the machine's pace):
    // either way the outage is reported, and so is the registry's return.
    assert!(
        log.contains("the registry has not answered") || log.contains("the registry cannot be reached"),
        "the outage at mount was not reported:\n{log}"
    );
    assert!(log.contains("the registry answers"), "the return of the registry was not reported:\n{log}");
}

#[test]
fn a_mounts_first_reads_go_out_without_waiting_for_the_registry_check() {
    // An open registry whose `/v2/` check never answers: reads are sent with the credentials as they are
    // (none) and served, well inside a read timeout the check alone would outlast.
    let (layer, files) = files_layer("data", 2, 1 << 20, Compression::Gzip);
    let mut served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    let check = Fault::new(FaultKind::Blackhole).path_is("/v2/");
    served.restart_proxy(Some(ProxyConfig::default().with_faults(vec![check])));
    let m = served.mount("mnt", &["--read-timeout", "5", "--no-startup-set"]);
    for (name, bytes) in &files {
        assert!(std::fs::read(m.dir.join(name)).unwrap() == *bytes, "{name}");
    }
    let stats = served.proxy().stats();
    assert!(stats.log.iter().any(|r| r.path == "/v2/" && r.fault.is_some()), "the check was not made");
    m.stop();
}

/// clip-store's `failure_holdoff` for the 2 s deadline, with room to spare.
const HOLDOFF: Duration = Duration::from_millis(1100);

/// Span files in the cache whose bytes do not hash to their name.
fn bad_span_files(cache: &Path) -> (usize, Vec<PathBuf>) {
    let (mut checked, mut bad) = (0, Vec::new());
    for shard in std::fs::read_dir(cache.join("spans")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                continue; // a write in progress when the process died: never read
            }
            checked += 1;
            if Digest::sha256(&std::fs::read(f.path()).unwrap()).hex() != name {
                bad.push(f.path());
            }
        }
    }
    (checked, bad)
}

#[test]
fn kill_9_while_fetching_leaves_no_bad_span_and_a_remount_serves_the_right_bytes() {
    let (layer, files) = files_layer("data", 32, 1 << 20, Compression::Gzip);
    let mut served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    // A slow link, so that the kill lands in the middle of many fetches.
    served.restart_proxy(Some(ProxyConfig::default().with_rate_mbit(80.0)));
    let m = served.mount("mnt", &[]);
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let dir = m.dir.clone();
            let paths: Vec<String> = files.iter().skip(t).step_by(4).map(|(p, _)| p.clone()).collect();
            std::thread::spawn(move || {
                for p in paths {
                    let _ = std::fs::read(dir.join(p));
                }
            })
        })
        .collect();
    // Kill while a fetch is in flight: once some spans are in the cache, every further blob answer stalls
    // after 100 KB, so the kill lands while one is half received.
    common::wait_within(Duration::from_secs(60), "no fetch reached the cache", || {
        bad_span_files(&served.cache()).0 > 0
    });
    served.proxy().set_faults(vec![Fault::new(FaultKind::StallAfter { after_bytes: 100_000 }).blobs_only()]);
    let stalled = |stats: &ProxyStats| {
        stats.log.iter().any(|r| r.fault.as_deref() == Some("stall-after") && r.body_bytes >= 100_000)
    };
    common::wait_within(Duration::from_secs(60), "no fetch was caught in flight", || stalled(&served.proxy().stats()));
    let before_kill = served.proxy().stats().blob_requests;
    m.kill9();
    for r in readers {
        r.join().unwrap();
    }
    let (checked, bad) = bad_span_files(&served.cache());
    assert!(checked > 0, "nothing reached the cache before the kill");
    assert!(bad.is_empty(), "span files that fail their digest after kill -9: {bad:?}");
    println!("kill -9 after {before_kill} blob requests: {checked} span files in the cache, all match their digest");

    served.restart_proxy(Some(ProxyConfig::default()));
    let again = served.mount("mnt2", &[]);
    for (path, data) in &files {
        assert!(std::fs::read(again.dir.join(path)).unwrap() == *data, "{path}: wrong bytes after kill -9");
    }
    again.stop();
}

#[test]
fn corrupted_cache_files_are_refetched_never_served() {
    let (layer, files) = files_layer("data", 6, 1 << 20, Compression::Zstd);
    let served = Served::with_span_mib(&Image::new(vec![layer]), 1);
    let first = served.mount("mnt", &[]);
    for (path, data) in &files {
        assert!(std::fs::read(first.dir.join(path)).unwrap() == *data);
    }
    // A second open of a fully cached file makes a passthrough copy under files/: corrupt those too.
    for (path, _) in &files {
        std::fs::read(first.dir.join(path)).unwrap();
    }
    first.stop();

    let corrupted = cache_files(&served.cache());
    assert!(corrupted.iter().any(|p| p.starts_with(served.cache().join("spans"))), "no span files: {corrupted:?}");
    for p in &corrupted {
        // As a crash before the bytes reached the disk leaves a file: changed, and not sealed (mode 0600; a
        // sealed file, synced and verified before, is trusted without hashing).
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
        let mut byte = [0u8];
        let at = f.metadata().unwrap().len() / 2;
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    }

    let addr = common::free_addr();
    let second = served.mount("mnt2", &["--metrics", &addr]);
    for (path, data) in &files {
        assert!(std::fs::read(second.dir.join(path)).unwrap() == *data, "{path}: corrupted cache bytes were served");
    }
    let failures = metric(&addr, "clip_cache_verify_failures_total");
    assert!(failures > 0.0, "no cache verify failure counted");
    assert!(metric(&addr, "clip_fetched_bytes_total") > 0.0, "nothing was fetched again");
    second.stop();
    println!("corrupted {} cache files; {failures} verify failures counted, all refetched", corrupted.len());
}

// ---- load ----

/// The layers of the load image: (path prefix, compression, MiB). About 1 GiB of file data in all.
const LOAD_LAYERS: [(&str, Compression, usize); 3] =
    [("gz", Compression::Gzip, 352), ("zst", Compression::Zstd, 352), ("raw", Compression::None, 320)];
const LOAD_READERS: usize = 64;
const LOAD_READS_PER_READER: usize = 40;

/// A layer of files `PREFIX/NNNN` of 256 KiB to 8 MiB of pseudo-random bytes, `mib` MiB in all. Returns
/// the layer (gzip by the `gzip` binary at level 1, zstd as 4 MiB frames) and the files in order.
fn load_layer(prefix: &str, compression: Compression, mib: usize) -> (Layer, Vec<(String, u64)>) {
    let mut l = LayerBuilder::new();
    l.dir(prefix);
    let (mut left, mut i, mut files) = (mib << 20, 0u64, Vec::new());
    while left > 0 {
        let size = (((i * 2_654_435_761) % 32 + 1) << 18).min(left as u64) as usize;
        let path = format!("{prefix}/{i:04}");
        l.file(path.as_str(), pseudo_random_bytes(i + 1_000_003 * (compression as u64 + 1), size));
        files.push((path, size as u64));
        left -= size;
        i += 1;
    }
    let tar = l.finish();
    let layer = match compression {
        Compression::Gzip => {
            let blob = gzip_cli(&tar, 1);
            Layer::from_blob(tar, blob, Compression::Gzip)
        }
        Compression::Zstd => {
            let blob = zstd_multi_frame(&tar, 4 << 20);
            Layer::from_blob(tar, blob, Compression::Zstd)
        }
        Compression::None => Layer::new(tar, Compression::None),
    };
    (layer, files)
}

#[test]
fn load_64_readers_at_random_offsets_with_5_percent_faults_get_every_byte_right() {
    let started = Instant::now();
    let built: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = LOAD_LAYERS.iter().map(|&(p, c, mib)| s.spawn(move || load_layer(p, c, mib))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Expected bytes of every file: from the uncompressed tars.
    let mut expected: Vec<(String, u64, u64, usize)> = Vec::new(); // (path, offset in tar, size, layer)
    for (layer_index, (layer, _)) in built.iter().enumerate() {
        for (path, off, size) in tar_files(layer.tar()) {
            expected.push((path, off, size, layer_index));
        }
    }
    let tars: Vec<Vec<u8>> = built.iter().map(|(l, _)| l.tar().to_vec()).collect();
    let total: u64 = expected.iter().map(|e| e.2).sum();
    let image = Image::new(built.into_iter().map(|(l, _)| l).collect());
    let served = Served::with_span_mib(&image, 4);
    drop(image);
    let setup = started.elapsed();

    // 5 % of blob requests fail, in four ways.
    let each = 0.0125;
    served.proxy().set_faults(vec![
        Fault::new(FaultKind::Status(503)).blobs_only().probability(each),
        Fault::new(FaultKind::ResetMidBody { after_bytes: 100_000 }).blobs_only().probability(each),
        Fault::new(FaultKind::TruncateBody { after_bytes: 200_000 }).blobs_only().probability(each),
        Fault::new(FaultKind::FlipBit { offset: 3_000 }).blobs_only().probability(each),
    ]);
    let addr = common::free_addr();
    let mut m = served.mount("mnt", &["--metrics", &addr]);
    let reading = Instant::now();
    let results: Vec<(Vec<Duration>, u64, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..LOAD_READERS)
            .map(|t| {
                let (expected, tars, dir) = (&expected, &tars, &m.dir);
                s.spawn(move || load_reader(t as u64, expected, tars, dir, total))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let reading = reading.elapsed();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let bytes: u64 = results.iter().map(|r| r.1).sum();
    let wrong: Vec<&String> = results.iter().flat_map(|r| r.2.iter()).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let stats = served.proxy().stats();
    assert_alive(&mut m);
    let verify_failures = metric(&addr, "clip_verify_failures_total");
    let read_errors = metric(&addr, "clip_fuse_read_errors_total");
    println!(
        "load: {:.0} MiB image in {} layers ({setup:.0?} to build, push and index); {} readers x {} reads = {} reads, \
         {} MiB read in {reading:.1?}; {} blob requests, {} faults injected, {verify_failures} verify failures; \
         wrong reads: {}; read latency p50 {:?}, p99 {:?}, max {:?}",
        total as f64 / 1048576.0,
        LOAD_LAYERS.len(),
        LOAD_READERS,
        LOAD_READS_PER_READER,
        latencies.len(),
        bytes >> 20,
        stats.blob_requests,
        stats.faults_injected,
        wrong.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
    );
    assert!(wrong.is_empty(), "wrong bytes: {wrong:?}");
    assert_eq!(latencies.len(), LOAD_READERS * LOAD_READS_PER_READER);
    assert_eq!(read_errors, 0.0, "reads failed");
    assert!(stats.faults_injected > 0, "no fault was injected");
    m.stop();
}

/// One reader: random files (weighted by size) at random offsets, each read compared with the tar.
fn load_reader(
    seed: u64,
    files: &[(String, u64, u64, usize)],
    tars: &[Vec<u8>],
    dir: &Path,
    total: u64,
) -> (Vec<Duration>, u64, Vec<String>) {
    let mut rng = pseudo_random_bytes(seed + 1000, LOAD_READS_PER_READER * 24);
    let mut next = move || u64::from_le_bytes(rng.drain(..8).collect::<Vec<u8>>().try_into().unwrap());
    let (mut latencies, mut bytes, mut wrong) = (Vec::new(), 0u64, Vec::new());
    for _ in 0..LOAD_READS_PER_READER {
        // A uniformly random byte of the image, then a read of up to 256 KiB from there.
        let mut at = next() % total;
        let (path, tar_off, size, layer) = files
            .iter()
            .find(|f| {
                if at < f.2 {
                    true
                } else {
                    at -= f.2;
                    false
                }
            })
            .unwrap();
        let len = (next() % (256 << 10) + 1).min(size - at);
        let mut buf = vec![0u8; len as usize];
        let asked = Instant::now();
        let file = std::fs::File::open(dir.join(path)).unwrap();
        match file.read_exact_at(&mut buf, at) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => panic!("{path}: short read at {at}"),
            Err(e) => panic!("{path}: read of {len} at {at}: {e}"),
        }
        latencies.push(asked.elapsed());
        let start = (tar_off + at) as usize;
        if buf[..] != tars[*layer][start..start + len as usize] {
            wrong.push(format!("{path} at {at} ({len} bytes)"));
        }
        bytes += len;
    }
    (latencies, bytes, wrong)
}
