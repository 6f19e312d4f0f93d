//! End to end: prefetch profiles. A mount with `--record-profile` writes the spans read in first-touch
//! order; a cold mount with `--profile` prefetches them so the same reads fetch nothing new.

mod common;

use std::path::Path;
use std::time::Duration;

use clip_format::Archive;
use clip_testkit::*;
use common::{clip_ok, metric, s, tar_files, text, MountProc, Served};

/// What a profile records for reading `[off, off + size)` of layer 0's tar: each span it covers as the
/// profile's JSON names it, `[layer, span]` when the read reaches the span's end, else `[layer, span,
/// decoded bytes of the span read]`.
fn spans_of(archive: &Archive, off: u64, size: u64) -> Vec<Vec<u64>> {
    let data = clip_format::DataRef { layer: clip_format::LayerIndex(0), offset: off, size };
    let whole_file = archive.file_spans(data, 0..size).map(Result::unwrap);
    whole_file
        .map(|slice| {
            let len = slice.span_range.end - slice.span_range.start;
            let mut entry = vec![0, slice.span.index() as u64];
            if slice.within.end < len {
                entry.push(slice.within.end);
            }
            entry
        })
        .collect()
}

fn read_profile(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A cold mount of `index` with `--profile profile`: waits until the profile's `spans` are loaded, reads
/// `files` (checked against `tar`) and returns the compressed bytes fetched by then; asserts that the
/// reads fetched nothing the prefetch had not.
fn replay(index: &Path, dir: &Path, profile: &Path, spans: usize, files: &[(String, u64, u64)], tar: &[u8]) -> f64 {
    let addr = format!("127.0.0.1:{}", find_free_port());
    let cache = dir.join("cache");
    let m = MountProc::start(
        index,
        &dir.join("mnt"),
        &["--cache-dir", s(&cache), "--profile", s(profile), "--metrics", &addr],
    );
    // A span is loaded whole or as a prefix, or (from a resume point) as a piece.
    let loaded = || metric(&addr, "clip_prefetched_spans_total") + metric(&addr, "clip_pieces_loaded_total");
    let what = format!("the profile's {spans} spans were not prefetched");
    common::wait_within(Duration::from_secs(60), &what, || loaded() >= spans as f64);
    let fetched = metric(&addr, "clip_spans_fetched_total");
    assert!(fetched + metric(&addr, "clip_pieces_loaded_total") >= spans as f64, "prefetch fetched {fetched} spans");
    let bytes = metric(&addr, "clip_fetched_bytes_total");
    for (path, off, size) in files {
        assert!(std::fs::read(m.dir.join(path)).unwrap() == tar[*off as usize..(*off + *size) as usize], "{path}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reads covered by the profile fetched spans");
    let log = m.stop();
    assert!(log.contains("prefetching the spans of the profile"), "{log}");
    bytes
}

/// A 12 MiB gzip layer's image served and indexed (see [`Served`]): it, the layer's tar, the index, and
/// the index opened.
fn served_big_layer() -> (Served, Vec<u8>, std::path::PathBuf, Archive) {
    let layer = big_gzip_layer(12);
    let tar = layer.tar().to_vec();
    let img = Served::new(&Image::new(vec![layer]));
    let index = img.index();
    let archive = Archive::open(&index).unwrap();
    (img, tar, index, archive)
}

#[test]
fn recorded_profile_lists_first_reads_and_a_cold_mount_prefetches_as_much_of_them() {
    let (img, tar, index, archive) = served_big_layer();
    let dir = &img.dir;

    // Two small files that end in the first third of a span (so a prefix of it is all they need), the
    // later one in the layer read first: the profile must keep that order.
    let ends_early = |&(_, off, size): &(String, u64, u64)| {
        let layer = clip_format::LayerIndex(0);
        let span = archive.find_span(layer, off + size - 1).unwrap();
        let range = archive.span_range(layer, span).unwrap();
        size > 0 && size < 64 << 10 && off >= range.start && (off + size - range.start) * 3 < range.end - range.start
    };
    let files = tar_files(&tar);
    let early: Vec<_> = files.iter().filter(|f| ends_early(f)).collect();
    assert!(early.len() >= 2, "the test layer has too few files that end early in a span");
    let picked = vec![early[early.len() - 1].clone(), early[0].clone()];
    let profile = dir.path().join("profile.json");
    let cache1 = dir.path().join("cache1");
    let m = MountProc::start(
        &index,
        &dir.path().join("rec"),
        &["--cache-dir", s(&cache1), "--record-profile", s(&profile)],
    );
    let mut expected = Vec::new();
    for (path, off, size) in &picked {
        let bytes = std::fs::read(m.dir.join(path)).unwrap();
        assert!(bytes == tar[*off as usize..(*off + *size) as usize], "{path}");
        for entry in spans_of(&archive, *off, *size) {
            // A span read again keeps its place and reaches as far as the furthest read (all of it: no third).
            match expected.iter_mut().find(|e: &&mut Vec<u64>| e[..2] == entry[..2]) {
                Some(e) if e.len() == 3 && entry.len() == 3 => e[2] = e[2].max(entry[2]),
                Some(e) => e.truncate(2),
                None => expected.push(entry),
            }
        }
    }
    let log = m.stop();
    assert!(log.contains("profile recorded"), "{log}");
    let json = read_profile(&profile);
    let recorded: Vec<Vec<u64>> = serde_json::from_value(json["spans"].clone()).unwrap();
    assert_eq!(recorded, expected, "{json}");
    assert!(recorded.iter().all(|e| e.len() == 3), "each file ends early in its span: {json}");
    let indexed = archive.meta().manifest_digest.map(|d| d.to_string());
    assert_eq!(json["manifest_digest"].as_str(), indexed.as_deref());

    // A cold cache with the profile: the spans load in the background, each as far as the recorded reads
    // went; the same reads then fetch nothing.
    let prefixes = replay(&index, &dir.path().join("a"), &profile, expected.len(), &picked, &tar);
    // The same profile as an older clip wrote it (whole spans) loads the same spans, and more of each.
    let mut whole = json.clone();
    whole["spans"] = recorded.iter().map(|e| e[..2].to_vec()).collect::<Vec<_>>().into();
    whole.as_object_mut().unwrap().remove("resume");
    let whole_profile = dir.path().join("whole.json");
    std::fs::write(&whole_profile, serde_json::to_vec(&whole).unwrap()).unwrap();
    let wholes = replay(&index, &dir.path().join("b"), &whole_profile, expected.len(), &picked, &tar);
    assert!(prefixes < wholes * 0.75, "prefix replay fetched {prefixes} bytes, whole spans {wholes}");
}

/// `clip ARGS` on a clean node (see [`common::clip_node`]); returns (success, stdout, stderr).
fn clip_node(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = common::clip_node(args, env);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn pushed_profile_is_found_and_prefetched_by_a_clean_node() {
    let registry = Registry::start();
    let mut layer = LayerBuilder::new();
    layer.dir("etc").file("etc/greeting", "hello from the image\n").file("etc/other", "other\n");
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("v1", &Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]));
    registry.push(layout.path(), "v1", "app:v1");
    let image = registry.image_ref("app:v1");
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("app.clip");
    clip_ok(&["index", &image, "-o", s(&index)]);

    let profile = dir.path().join("profile.json");
    let cache = dir.path().join("cache0");
    let m =
        MountProc::start(&index, &dir.path().join("rec"), &["--cache-dir", s(&cache), "--record-profile", s(&profile)]);
    assert_eq!(std::fs::read_to_string(m.dir.join("etc/greeting")).unwrap(), "hello from the image\n");
    m.stop();
    let recorded = read_profile(&profile);
    assert!(!recorded["spans"].as_array().unwrap().is_empty(), "{recorded}");

    let (ok, _, err) = clip_node(&["profile", "push", &image, s(&profile)], &[]);
    assert!(ok, "clip profile push failed:\n{err}");

    let state = dir.path().join("node/state");
    let env = common::node_env(&dir.path().join("node"));
    let (ok, out, err) = clip_node(&["pull", &image], &env);
    assert!(ok, "clip pull failed:\n{err}");
    assert!(err.contains("prefetch profile from registry"), "{err}");
    let rootfs = std::path::PathBuf::from(out.trim());
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/greeting")).unwrap(), "hello from the image\n");
    let saved = std::fs::read_dir(state.join("profiles")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(read_profile(&saved), recorded);
    let mount_log = std::fs::read_dir(state.join("mounts")).unwrap().next().unwrap().unwrap().path().join("mount.log");
    assert!(std::fs::read_to_string(&mount_log).unwrap().contains("prefetching the spans of the profile"));
    let (ok, _, err) = clip_node(&["gc"], &env);
    assert!(ok, "clip gc: {err}");
}

#[test]
fn clip_run_records_a_profile_and_a_clean_node_runs_with_the_pushed_one() {
    let registry = Registry::start();
    registry.push(&common::debian_layout(), "bookworm", "debian:test");
    let image = registry.image_ref("debian:test");
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| common::node_env(&dir.path().join(name));
    let profile = dir.path().join("debian.json");
    let (ok, out, err) =
        clip_node(&["run", "--record-profile", s(&profile), &image, "--", "cat", "/etc/os-release"], &node("first"));
    assert!(ok, "clip run failed:\n{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    // The mount ended with the run (last user out) and wrote the profile.
    let recorded = read_profile(&profile);
    assert!(recorded["spans"].as_array().is_some_and(|s| !s.is_empty()), "{recorded}");
    assert!(recorded["manifest_digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{recorded}");
    // What `cat` loads lies inside spans (the C library after others): the profile has resume points.
    let points = recorded["resume"].as_array().map_or(0, Vec::len);
    assert!(points > 0, "{recorded}");

    let (ok, _, err) = clip_node(&["profile", "push", &image, s(&profile)], &[]);
    assert!(ok, "clip profile push failed:\n{err}");
    let (ok, out, err) = clip_node(&["run", &image, "--", "cat", "/etc/os-release"], &node("second"));
    assert!(ok, "clip run failed:\n{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    assert!(err.contains("prefetch profile from registry"), "{err}");
    // The clean node's mount loaded every resume point of the pushed profile as a piece, checked.
    let logs: String = std::fs::read_dir(dir.path().join("second/state/mounts"))
        .unwrap()
        .map(|d| std::fs::read_to_string(d.unwrap().path().join("mount.log")).unwrap_or_default())
        .collect();
    let loaded = format!("loaded={points} rejected=0");
    assert!(logs.lines().any(|l| l.contains("the profile's pieces are loaded") && l.contains(&loaded)), "{logs}");
}

/// A cold mount of `index` with `--profile profile` (of one span) and a fresh cache: waits for its span's
/// piece to be loaded or its resume point rejected (or, without one, the span prefetched), reads `file` (checked against `tar`) and returns (pieces loaded,
/// compressed bytes fetched in all, the mount's log); when the piece was loaded, asserts that the read
/// fetched nothing more.
fn replay_piece(index: &Path, dir: &Path, profile: &Path, file: &(String, u64, u64), tar: &[u8]) -> (f64, f64, String) {
    let addr = format!("127.0.0.1:{}", find_free_port());
    let cache = dir.join("cache");
    let args = ["--cache-dir", s(&cache), "--profile", s(profile), "--metrics", &addr];
    let m = MountProc::start(index, &dir.join("mnt"), &args);
    // The span is loaded as a piece, or its resume point rejected, or (a profile without one) prefetched.
    let done = || {
        ["clip_pieces_loaded_total", "clip_pieces_rejected_total", "clip_prefetched_spans_total"]
            .iter()
            .map(|m| metric(&addr, m))
            .sum::<f64>()
    };
    common::wait_within(Duration::from_secs(60), "the profile's span was not loaded", || done() >= 1.0);
    let loaded = metric(&addr, "clip_pieces_loaded_total");
    let before = metric(&addr, "clip_fetched_bytes_total");
    let (path, off, size) = file;
    assert!(std::fs::read(m.dir.join(path)).unwrap() == tar[*off as usize..(*off + *size) as usize], "{path}");
    let after = metric(&addr, "clip_fetched_bytes_total");
    if loaded > 0.0 {
        assert_eq!(after, before, "a read inside the piece fetched more");
    }
    (loaded, after, m.stop())
}

#[test]
fn a_resume_point_fetches_a_span_from_near_its_first_read_and_a_forged_one_changes_no_byte() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (img, tar, index, archive) = served_big_layer();
    let dir = &img.dir;

    // A small file that starts more than half a span into its span and ends in it.
    let l0 = clip_format::LayerIndex(0);
    let files = tar_files(&tar);
    let file = files
        .iter()
        .find(|(_, off, size)| {
            let range = archive.span_range(l0, archive.find_span(l0, *off).unwrap()).unwrap();
            (4096..64 << 10).contains(size)
                && off - range.start > (range.end - range.start) / 2
                && off + size <= range.end
        })
        .expect("the test layer has a small file in the second half of a span")
        .clone();
    let span = archive.find_span(l0, file.1).unwrap();
    let range = archive.span_range(l0, span).unwrap();

    // Recording finds a resume point at a block boundary before the file, reaching past its end.
    let profile = dir.path().join("profile.json");
    let m = MountProc::start(
        &index,
        &dir.path().join("rec"),
        &["--cache-dir", s(&dir.path().join("cache0")), "--record-profile", s(&profile)],
    );
    std::fs::read(m.dir.join(&file.0)).unwrap();
    let log = m.stop();
    assert!(log.contains("profile recorded") && log.contains("resume=1"), "{log}");
    let json = read_profile(&profile);
    let resume = json["resume"].as_array().unwrap();
    assert_eq!(resume.len(), 1, "{json}");
    let r = &resume[0];
    assert_eq!(r["span"].as_u64(), Some(span.index() as u64), "{json}");
    let out = r["out"].as_u64().unwrap();
    assert!(range.start < out && out <= file.1, "resumes at {out}, the file starts at {}", file.1);
    assert!(r["out_end"].as_u64().unwrap() >= file.1 + file.2, "{json}");
    assert_eq!(r["leaves"].as_str().unwrap().len() as u64, 64 * (range.end - range.start).div_ceil(32 << 10));

    // A cold start with it fetches the span from there; without it, from the span's start.
    let (loaded, with, _) = replay_piece(&index, &dir.path().join("a"), &profile, &file, &tar);
    assert_eq!(loaded, 1.0);
    // A remount over that cache with the profile takes the piece from the disk cache (checked again) ...
    let (loaded, again, _) = replay_piece(&index, &dir.path().join("a"), &profile, &file, &tar);
    assert_eq!((loaded, again), (1.0, 0.0), "the piece was fetched again");
    // ... and one whose kept bytes were damaged fetches them again.
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("a/cache/prefixes"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_none())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut bytes = std::fs::read(&kept[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&kept[0], &bytes).unwrap();
    let (loaded, refetched, _) = replay_piece(&index, &dir.path().join("a"), &profile, &file, &tar);
    assert_eq!(loaded, 1.0);
    assert!(refetched > 0.0, "a damaged piece was served from the disk cache");
    let mut plain = json.clone();
    plain.as_object_mut().unwrap().remove("resume");
    let plain_profile = dir.path().join("plain.json");
    std::fs::write(&plain_profile, serde_json::to_vec(&plain).unwrap()).unwrap();
    let (loaded, without, _) = replay_piece(&index, &dir.path().join("b"), &plain_profile, &file, &tar);
    assert_eq!(loaded, 0.0);
    assert!(with < without / 2.0, "fetched {with} bytes from the resume point, {without} from the span's start");

    // Forged resume points: none is used, and the file reads right all the same.
    let window = clip_format::Archive::decode_window(&b64.decode(r["window"].as_str().unwrap()).unwrap()).unwrap();
    let mut forgeries: Vec<(&str, serde_json::Value)> = Vec::new();
    let mut leaf = r.clone();
    let leaves = r["leaves"].as_str().unwrap();
    let at = 64 * ((file.1 - range.start) / (32 << 10)) as usize;
    let flipped = if &leaves[at..at + 1] == "0" { "1" } else { "0" };
    leaf["leaves"] = format!("{}{flipped}{}", &leaves[..at], &leaves[at + 1..]).into();
    forgeries.push(("a leaf digest", leaf));
    let mut moved = r.clone();
    moved["out"] = (out + 1).into();
    forgeries.push(("where decoding starts", moved));
    let mut shifted = r.clone();
    shifted["in"] = (r["in"].as_u64().unwrap() - 1).into();
    forgeries.push(("the compressed offset", shifted));
    // The point's window is used by its decode (trimming keeps only what is), so another window is a forgery.
    assert!(!window.is_empty(), "the resume point has no window to forge: {r}");
    let mut other = r.clone();
    let inverted: Vec<u8> = window.iter().map(|b| !b).collect();
    other["window"] = b64.encode(clip_format::encode_window(&inverted).unwrap()).into();
    forgeries.push(("the window", other));
    for (i, (what, forged)) in forgeries.into_iter().enumerate() {
        let mut bad = json.clone();
        bad["resume"] = vec![forged].into();
        let bad_profile = dir.path().join(format!("forged-{i}.json"));
        std::fs::write(&bad_profile, serde_json::to_vec(&bad).unwrap()).unwrap();
        let (loaded, _, log) = replay_piece(&index, &dir.path().join(format!("f{i}")), &bad_profile, &file, &tar);
        assert_eq!(loaded, 0.0, "a resume point with another {what} was used");
        assert!(log.contains("a resume point of the profile is not used"), "{what}: {log}");
    }
}
