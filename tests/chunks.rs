//! End to end, partial span fetches: a cold read of a small file in the middle of a big span fetches the
//! compressed bytes up to the file's end (checked against the index's compressed-chunk digests), not the
//! whole span — gzip, zstd and raw layers — and serves the bytes `umoci unpack` gives; a flipped bit in a
//! fetched chunk is refetched, and a registry that keeps lying gets EIO, never wrong bytes; an index
//! without chunk digests (as older clips wrote) still mounts, reads right and fetches whole spans.

mod common;

use std::path::Path;
use std::time::Duration;

use clip_format::{Archive, DataRef, LayerIndex, SpanId, SpanIds};
use clip_testkit::*;
use common::{metric, Served};
use rstest::rstest;

/// Files `data/fNNN` of 8 KiB of text-like bytes (4 bits of entropy a byte, so they compress about 2:1),
/// 3 MiB in all: three spans of 1 MiB.
fn text_layer(compression: Compression) -> Layer {
    let mut l = LayerBuilder::new();
    l.dir("data");
    for i in 0..384u64 {
        let text: Vec<u8> = pseudo_random_bytes(i + 17, 8 << 10).iter().map(|b| b'a' + b % 16).collect();
        l.file(format!("data/f{i:03}").as_str(), text);
    }
    let tar = l.finish();
    match compression {
        Compression::Zstd => {
            let blob = zstd_multi_frame(&tar, 64 << 10);
            Layer::from_blob(tar, blob, Compression::Zstd)
        }
        other => Layer::new(tar, other),
    }
}

/// Where the bytes of the file at `path` lie in its layer.
fn data_of(a: &Archive, path: &str) -> DataRef {
    a.node(a.resolve(path.as_bytes()).unwrap().unwrap()).unwrap().data_ref().unwrap()
}

/// A file whose bytes lie 30–50 % into a span that is not the layer's last, and that span's compressed
/// size as the index records it.
fn file_mid_span(index: &Path) -> (String, u64) {
    let a = Archive::open(index).unwrap();
    let layer = LayerIndex(0);
    let last = a.layer_spans(layer).unwrap().last().unwrap();
    for i in 0..384 {
        let path = format!("/data/f{i:03}");
        let data = data_of(&a, &path);
        let span = a.find_span(layer, data.offset).unwrap();
        let range = a.span_range(layer, span).unwrap();
        let into = (data.offset + data.size - range.start) * 100 / (range.end - range.start);
        if span < last && (30..50).contains(&into) && a.find_span(layer, data.offset + data.size - 1).unwrap() == span {
            let compressed = a.span(span.next()).unwrap().in_offset - a.span(span).unwrap().in_offset;
            return (path, compressed);
        }
    }
    panic!("no file 30-50 % into a span");
}

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::raw(Compression::None)]
fn a_cold_read_in_the_middle_of_a_span_fetches_less_than_the_span(#[case] compression: Compression) {
    let served = Served::with_span_mib(&Image::new(vec![text_layer(compression)]), 1);
    let (path, span_compressed) = file_mid_span(&served.index());
    let m = served.mount("mnt", &[]);
    let got = std::fs::read(m.dir.join(&path[1..])).unwrap();
    let fetched = served.proxy().stats().blob_bytes;
    let unpacked = umoci_unpack(served.layout.path(), "t");
    assert!(got == std::fs::read(unpacked.rootfs().join(&path[1..])).unwrap(), "{path}: not umoci's bytes");
    assert!(fetched > 0, "nothing was fetched");
    assert!(
        fetched < span_compressed,
        "{compression:?}: reading {path} fetched {fetched} bytes, its span holds {span_compressed} compressed"
    );
    println!("{compression:?}: {path} cost {fetched} of the span's {span_compressed} compressed bytes");
    m.stop();
}

#[test]
fn a_prefix_estimate_that_falls_short_costs_one_more_request_not_several() {
    // One 4 MiB span: 1 MiB of incompressible files, then 3 MiB of zeros. A file near the end of the random
    // part needs ~0.9 of the span's compressed bytes, but a span-wide estimate puts it at a quarter. Going on
    // at the fetched prefix's own ratio takes one more request; doubling took two more.
    let mut l = LayerBuilder::new();
    l.dir("data");
    for i in 0..120u64 {
        l.file(format!("data/r{i:03}").as_str(), pseudo_random_bytes(i + 5, 8 << 10));
    }
    l.file("data/zeros", vec![0u8; 3 << 20]);
    let served = Served::with_span_mib(&Image::new(vec![Layer::new(l.finish(), Compression::Gzip)]), 4);
    let path = "data/r110";
    let a = Archive::open(&served.index()).unwrap();
    let data = data_of(&a, &format!("/{path}"));
    assert_eq!(a.find_span(LayerIndex(0), data.offset).unwrap().0, 0, "the test wants {path} in the first span");
    let m = served.mount("mnt", &[]);
    let got = std::fs::read(m.dir.join(path)).unwrap();
    let unpacked = umoci_unpack(served.layout.path(), "t");
    assert!(got == std::fs::read(unpacked.rootfs().join(path)).unwrap(), "{path}: not umoci's bytes");
    let stats = served.proxy().stats();
    println!("{path}: {} range requests, {} bytes", stats.blob_requests, stats.blob_bytes);
    assert_eq!(stats.blob_requests, 2, "the first estimate falls short once, and one more request must do");
    m.stop();
}

#[test]
fn a_flipped_bit_in_a_fetched_chunk_is_refetched_and_a_lying_registry_gets_eio() {
    let served = Served::with_span_mib(&Image::new(vec![text_layer(Compression::Gzip)]), 1);
    let (path, _) = file_mid_span(&served.index());
    let addr = common::free_addr();
    let m = served.mount("mnt", &["--metrics", &addr, "--read-timeout", "20"]);
    let unpacked = umoci_unpack(served.layout.path(), "t");
    let expected = |p: &str| std::fs::read(unpacked.rootfs().join(p)).unwrap();

    served.proxy().set_faults(vec![Fault::new(FaultKind::FlipBit { offset: 1000 }).blobs_only().times(1)]);
    let got = std::fs::read(m.dir.join(&path[1..])).unwrap();
    assert!(got == expected(&path[1..]), "{path}: a flipped bit was served");
    assert!(metric(&addr, "clip_verify_failures_total") >= 1.0, "the flipped bit went unnoticed");

    // Every answer flipped: the read (of a file in another span) fails, no byte of it is served.
    served.proxy().set_faults(vec![Fault::new(FaultKind::FlipBit { offset: 1000 }).blobs_only()]);
    let err = std::fs::read(m.dir.join("data/f383")).expect_err("bytes that never verify were served");
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    let log = m.stop();
    assert!(log.contains("compressed chunk at offset"), "the chunk digests did not catch it:\n{log}");
}

/// The prefix files under the cache directory `cache` (see the store's `cache::prefix`).
/// The prefix files (compressed bytes) in `cache`.
fn prefix_files(cache: &Path) -> Vec<std::path::PathBuf> {
    common::cache_files(&cache.join("prefixes")).into_iter().filter(|p| p.extension().is_none()).collect()
}

/// The decoded prefix files (`SPAN.part`) in `cache` that are sealed (mode 0400).
fn sealed_part_files(cache: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    common::cache_files(&cache.join("prefixes"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o400))
        .collect()
}

#[test]
fn a_remount_serves_a_partly_fetched_span_from_the_cache_and_refetches_a_damaged_prefix() {
    let served = Served::with_span_mib(&Image::new(vec![text_layer(Compression::Gzip)]), 1);
    let (path, span_compressed) = file_mid_span(&served.index());
    let unpacked = umoci_unpack(served.layout.path(), "t");
    let expected = std::fs::read(unpacked.rootfs().join(&path[1..])).unwrap();
    let cache = served.cache();

    let profile = served.dir.path().join("profile.json");
    let m = served.mount("first", &["--record-profile", common::s(&profile)]);
    assert!(std::fs::read(m.dir.join(&path[1..])).unwrap() == expected, "{path}: not umoci's bytes");
    let first = served.proxy().stats().blob_bytes;
    assert!(first > 0 && first < span_compressed, "{path}: fetched {first} of {span_compressed}: not a prefix");
    common::wait_within(Duration::from_secs(10), "the prefix and what it decodes to reached the disk cache", || {
        prefix_files(&cache).len() == 1 && sealed_part_files(&cache).len() == 1
    });
    m.stop();
    // Ending the recording fetched the span once more, for its resume point.
    let first = served.proxy().stats().blob_bytes;
    assert!(read_profile_resumes(&profile) == 1, "the file is mid-span: its span gets a resume point");

    // A fresh mount over that cache: the same read needs no byte from the registry, and takes the decoded
    // bytes from the disk (a disk hit) instead of inflating the prefix again. Replaying the recorded profile
    // finds that span local: the prefetch loads nothing.
    let addr = common::free_addr();
    let args = ["--cache-dir", common::s(&cache), "--metrics", &addr, "--profile", common::s(&profile)];
    let env = [("CLIP_LOG".to_owned(), "info,clip_store::schedule=debug".to_owned())];
    let m = common::MountProc::start_env(served.index().as_os_str(), &served.dir.path().join("second"), &args, &env);
    common::wait_within(Duration::from_secs(10), "the profile's prefetch ended", || m.log().contains("prefetch done"));
    assert_eq!(metric(&addr, "clip_prefetched_spans_total"), 0.0, "the profile's prefetch loaded a local span");
    assert!(std::fs::read(m.dir.join(&path[1..])).unwrap() == expected, "{path}: not umoci's bytes on remount");
    assert_eq!(served.proxy().stats().blob_bytes, first, "the remount fetched again what the cache held");
    assert!(metric(&addr, "clip_cache_disk_hits_total") >= 1.0, "the decoded prefix was not served from disk");
    // What the file needs is on disk: opening it is not a cold open, which would load its span ahead.
    assert_eq!(metric(&addr, "clip_open_prefetch_spans_total"), 0.0, "opening a file the cache holds loaded ahead");
    // Each read takes its own bytes from the decoded prefix file by range: the prefix is not loaded whole into
    // memory, so the file before it in the span is another disk hit, not a memory hit.
    let before = format!("data/f{:03}", path[7..].parse::<u32>().unwrap() - 1);
    assert!(std::fs::read(m.dir.join(&before)).unwrap() == std::fs::read(unpacked.rootfs().join(&before)).unwrap());
    assert!(metric(&addr, "clip_cache_disk_hits_total") >= 2.0, "{before}: not served from the decoded prefix file");
    assert_eq!(metric(&addr, "clip_cache_memory_hits_total"), 0.0, "the decoded prefix was loaded whole into memory");
    m.stop();

    // A decoded prefix that is not sealed cannot be trusted: it is deleted and the prefix inflated again.
    let part = sealed_part_files(&cache).pop().unwrap();
    std::fs::set_permissions(&part, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let addr = common::free_addr();
    let m = served.mount("unsealed", &["--metrics", &addr]);
    assert!(std::fs::read(m.dir.join(&path[1..])).unwrap() == expected, "{path}: not umoci's bytes, part unsealed");
    assert_eq!(served.proxy().stats().blob_bytes, first, "the remount fetched again what the cache held");
    assert_eq!(metric(&addr, "clip_cache_disk_hits_total"), 0.0, "an unsealed decoded prefix was served");
    m.stop();

    // A damaged prefix file: what the sealed decoded prefix holds is served without reading it; the first
    // read needing more of the span checks it, deletes it and fetches the bytes again. Reading every file
    // brings every span whole, umoci's bytes: no prefix file is left beside the span files.
    let prefix = prefix_files(&cache).pop().unwrap();
    let mut bytes = std::fs::read(&prefix).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&prefix, &bytes).unwrap();
    let m = served.mount("third", &[]);
    assert!(std::fs::read(m.dir.join(&path[1..])).unwrap() == expected, "{path}: not umoci's bytes, prefix damaged");
    assert_eq!(served.proxy().stats().blob_bytes, first, "what the decoded prefix holds was fetched again");
    for i in 0..384 {
        let name = format!("data/f{i:03}");
        assert!(std::fs::read(m.dir.join(&name)).unwrap() == std::fs::read(unpacked.rootfs().join(&name)).unwrap());
    }
    assert!(served.proxy().stats().blob_bytes > first, "nothing was fetched for the rest");
    common::wait_within(Duration::from_secs(10), "the prefix files were removed", || prefix_files(&cache).is_empty());
    let log = m.stop();
    assert!(log.contains("chunk digests"), "the damaged prefix was not reported:\n{log}");
}

/// How many resume points the profile at `path` holds.
fn read_profile_resumes(path: &std::path::Path) -> usize {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["resume"].as_array().map_or(0, Vec::len)
}

/// A gzip layer of text files: `before` files of 8 KiB, `data/NAME` of `len` bytes, then 200 files of 8 KiB.
fn layer_around(name: &str, len: usize, before: u64) -> Layer {
    let text =
        |seed: u64, len: usize| -> Vec<u8> { pseudo_random_bytes(seed, len).iter().map(|b| b'a' + b % 16).collect() };
    let mut l = LayerBuilder::new();
    l.dir("data");
    for i in 0..before {
        l.file(format!("data/a{i:02}").as_str(), text(i, 8 << 10));
    }
    l.file(format!("data/{name}").as_str(), text(99, len));
    for i in 0..200u64 {
        l.file(format!("data/b{i:03}").as_str(), text(100 + i, 8 << 10));
    }
    Layer::new(l.finish(), Compression::Gzip)
}

/// `data/big` (300 KiB of text) starts and ends inside one 1 MiB span, with other files after it in that span.
fn big_file_layer() -> Layer {
    layer_around("big", 300 << 10, 40)
}

#[test]
fn a_sequential_read_of_a_file_inside_a_span_fetches_to_the_files_end_not_the_spans() {
    let served = Served::with_span_mib(&Image::new(vec![big_file_layer()]), 1);
    let a = Archive::open(&served.index()).unwrap();
    let data = data_of(&a, "/data/big");
    let layer = LayerIndex(0);
    let span = a.find_span(layer, data.offset).unwrap();
    let range = a.span_range(layer, span).unwrap();
    let end = data.offset + data.size;
    assert_eq!(a.find_span(layer, end - 1).unwrap(), span, "data/big is not inside one span");
    let into = (end - range.start) * 100 / (range.end - range.start);
    assert!(into < 75, "data/big ends {into} % into its span: no room after it");
    let span_compressed = a.span(span.next()).unwrap().in_offset - a.span(span).unwrap().in_offset;

    // Read whole, in several requests: a sequential reader. What loads ahead of it stops where the file ends.
    let fetched = read_sequentially(&served, "data/big");
    let bound = span_compressed * (into + 10) / 100;
    assert!(
        fetched <= bound,
        "{fetched} of the span's {span_compressed} bytes fetched: past data/big's end ({into} %)"
    );
}

#[test]
fn a_file_a_partial_fetch_brought_whole_is_handed_to_passthrough_on_a_remount() {
    // data/big lies inside the first part of its span: a cold read fetches and keeps that prefix only. A
    // remount over the cache builds the file from the sealed decoded prefix (in the background, the first
    // open read through the daemon) and hands it to the kernel at a later open, so its reads never reach
    // the daemon (as for a file whose spans are whole on disk).
    let served = Served::with_span_mib(&Image::new(vec![big_file_layer()]), 1);
    let expected = std::fs::read(umoci_unpack(served.layout.path(), "t").rootfs().join("data/big")).unwrap();
    let first = served.mount("first", &[]);
    assert!(std::fs::read(first.dir.join("data/big")).unwrap() == expected, "data/big: not umoci's bytes");
    common::wait_within(Duration::from_secs(10), "the prefix and what it decodes to reached the disk cache", || {
        sealed_part_files(&served.cache()).len() == 1
    });
    first.stop();
    assert!(common::cache_files(&served.cache().join("spans")).is_empty(), "a whole span was kept");
    let fetched = served.proxy().stats().blob_bytes;

    let addr = common::free_addr();
    let m = served.mount("second", &["--metrics", &addr]);
    let file = m.dir.join("data/big");
    assert!(std::fs::read(&file).unwrap() == expected, "data/big: not umoci's bytes on remount");
    common::wait_within(Duration::from_secs(10), "data/big was not handed to passthrough", || {
        assert!(std::fs::read(&file).unwrap() == expected, "data/big: not umoci's bytes on remount");
        metric(&addr, "clip_fuse_passthrough_opens_total") >= 1.0
    });
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let reads = metric(&addr, "clip_fuse_requests_total{op=\"read\"}");
    assert!(std::fs::read(&file).unwrap() == expected, "data/big: not umoci's bytes through passthrough");
    assert_eq!(metric(&addr, "clip_fuse_requests_total{op=\"read\"}"), reads, "a read reached the daemon");
    assert_eq!(served.proxy().stats().blob_bytes, fetched, "the remount fetched what the cache held");
    m.stop();
}

/// Reads `path` whole through a fresh mount (a sequential reader, in many requests), checks umoci's bytes,
/// waits until the loads ahead have ended, and returns the blob bytes fetched.
fn read_sequentially(served: &Served, path: &str) -> u64 {
    let addr = common::free_addr();
    let m = served.mount("mnt", &["--metrics", &addr]);
    let got = std::fs::read(m.dir.join(path)).unwrap();
    let unpacked = umoci_unpack(served.layout.path(), "t");
    assert!(got == std::fs::read(unpacked.rootfs().join(path)).unwrap(), "{path}: not umoci's bytes");
    common::wait_within(Duration::from_secs(10), "the loads ahead ended", || {
        metric(&addr, "clip_loads_ahead ") == 0.0 && metric(&addr, "clip_inflight_fetches ") == 0.0
    });
    m.stop();
    served.proxy().stats().blob_bytes
}

#[test]
fn a_sequential_reader_loads_the_span_its_file_ends_in_only_to_the_files_end() {
    let served = Served::with_span_mib(&Image::new(vec![library_layer()]), 1);
    let a = Archive::open(&served.index()).unwrap();
    let data = data_of(&a, "/data/lib");
    let layer = LayerIndex(0);
    let (first, last) =
        (a.find_span(layer, data.offset).unwrap(), a.find_span(layer, data.offset + data.size - 1).unwrap());
    assert!(last > first, "data/lib does not cross a span boundary");
    let range = a.span_range(layer, last).unwrap();
    let into = (data.offset + data.size - range.start) * 100 / (range.end - range.start);
    assert!(into < 60, "data/lib ends {into} % into its last span: no room after it");
    let compressed = |s: SpanId| a.span(s.next()).unwrap().in_offset - a.span(s).unwrap().in_offset;
    let before: u64 = SpanIds::through(first, last).into_iter().filter(|&s| s != last).map(compressed).sum();

    // Read whole, in many requests: the loads ahead of the reader reach the last span, which they want only
    // as far as data/lib goes (other files fill the rest of it).
    let fetched = read_sequentially(&served, "data/lib");
    let bound = before + compressed(last) * (into + 15) / 100;
    assert!(
        fetched <= bound,
        "{fetched} bytes fetched, more than data/lib's spans to its end ({bound}): its last span ({} bytes) \
         loaded past data/lib's end ({into} %)",
        compressed(last)
    );
}

/// `data/lib` (1.3 MiB of text) crosses a 1 MiB span boundary and ends well inside the next span, with other
/// files after it.
fn library_layer() -> Layer {
    layer_around("lib", 1300 << 10, 16)
}

#[test]
fn a_profile_that_reads_most_of_a_span_fetches_that_much_not_the_whole_span() {
    let served = Served::with_span_mib(&Image::new(vec![text_layer(Compression::Gzip)]), 1);
    let a = Archive::open(&served.index()).unwrap();
    let layer = LayerIndex(0);
    let span = a.layer_spans(layer).unwrap().start;
    let range = a.span_range(layer, span).unwrap();
    let upto = (range.end - range.start) * 4 / 5;
    let compressed = a.span(span.next()).unwrap().in_offset - a.span(span).unwrap().in_offset;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    let digest = a.meta().manifest_digest.unwrap().to_string();
    let json = serde_json::json!({ "manifest_digest": digest, "spans": [[0, span.0, upto]] });
    std::fs::write(&profile, json.to_string()).unwrap();

    // The profile says the workload reads four fifths of the span: a prefetch fetches that far, not on to the
    // span's end as a reader that far in would (the rest would only delay the next spans on a busy link).
    let addr = common::free_addr();
    let args = ["--metrics", &addr, "--profile", profile.to_str().unwrap(), "--no-startup-set"];
    let m = served.mount("mnt", &args);
    common::wait_within(Duration::from_secs(10), "the profile's span was prefetched", || {
        metric(&addr, "clip_prefetched_spans_total") >= 1.0
    });
    let fetched = served.proxy().stats().blob_bytes;
    assert!(
        fetched > 0 && fetched * 10 < compressed * 9,
        "{fetched} bytes fetched for four fifths of a span of {compressed} compressed bytes"
    );

    // A read past what the profile named goes on from the prefix: umoci's bytes.
    let unpacked = umoci_unpack(served.layout.path(), "t");
    let past = (0..384)
        .map(|i| format!("data/f{i:03}"))
        .find(|p| {
            let data = data_of(&a, &format!("/{p}"));
            data.offset >= range.start + upto + (128 << 10) && data.offset + data.size <= range.end
        })
        .expect("a file past the profile's prefix in the span");
    assert!(
        std::fs::read(m.dir.join(&past)).unwrap() == std::fs::read(unpacked.rootfs().join(&past)).unwrap(),
        "{past}"
    );
    assert!(served.proxy().stats().blob_bytes > fetched, "{past} was served without fetching the rest of the span");
    m.stop();
}

/// Rewrites the index at `path` without its `CHNK` section (in the table; its bytes stay, unreferenced):
/// the index an older clip wrote.
fn strip_chunk_digests(path: &Path) {
    use clip_format::layout::{Header, SectionEntry, HEADER_LEN, SECTION_ENTRY_LEN, SEC_CHNK};
    let mut bytes = std::fs::read(path).unwrap();
    let header = Header::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
    let table = &bytes[header.table_offset as usize..][..header.sections as usize * SECTION_ENTRY_LEN];
    let kept: Vec<SectionEntry> =
        table.chunks_exact(SECTION_ENTRY_LEN).map(SectionEntry::decode).filter(|e| e.id != SEC_CHNK).collect();
    assert_eq!(kept.len() + 1, header.sections as usize, "the index has a CHNK section");
    let mut new_table = Vec::new();
    kept.iter().for_each(|e| e.encode(&mut new_table));
    let header = Header { sections: kept.len() as u32, table_crc: crc32c::crc32c(&new_table), ..header };
    bytes[..HEADER_LEN].copy_from_slice(&header.encode());
    bytes[HEADER_LEN..HEADER_LEN + new_table.len()].copy_from_slice(&new_table);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_index_without_chunk_digests_mounts_reads_right_and_fetches_whole_spans() {
    let served = Served::with_span_mib(&Image::new(vec![text_layer(Compression::Gzip)]), 1);
    let (path, span_compressed) = file_mid_span(&served.index());
    strip_chunk_digests(&served.index());
    assert!(Archive::open(&served.index()).unwrap().chunk_table().is_none());
    let m = served.mount("mnt", &[]);
    let unpacked = umoci_unpack(served.layout.path(), "t");
    let got = std::fs::read(m.dir.join(&path[1..])).unwrap();
    assert!(got == std::fs::read(unpacked.rootfs().join(&path[1..])).unwrap(), "{path}: not umoci's bytes");
    let fetched = served.proxy().stats().blob_bytes;
    assert!(fetched >= span_compressed, "{fetched} bytes fetched: not the whole span of {span_compressed}");
    assert_matches_umoci(served.layout.path(), "t", &m.dir, CompareOpts::default());
    m.stop();
}
