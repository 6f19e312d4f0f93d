//! End to end, hostile input: images built to attack the unpacker or the mount. Symlinks and hard links
//! that point out of the root (resolved inside it, as umoci does; `extract` never writes outside its
//! target), a zstd decompression bomb, 100 000 entries in one directory, a path 10 000 directories
//! deep, and names with newlines and invalid UTF-8 (a NUL cannot be part of a tar name: ustar fields end
//! at the first NUL, and a PAX `path` holding one is refused), and names with escape sequences, which
//! `clip ls` never prints raw. Each gives the right tree or a clear error: never a panic, a stack overflow
//! or a write outside the target.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clip_testkit::*;
use common::{clip, clip_fails, clip_ok, metric, s, unique, Indexed, MountProc};

/// Every path under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn symlinks_out_of_the_root_resolve_inside_it_and_extract_writes_nothing_outside() {
    let (x, y, z, w) = (unique("x"), unique("y"), unique("z"), unique("w"));
    let outside = unique("outside-dir");
    let mut lower = LayerBuilder::new();
    lower.symlink("evil", "/").symlink("up", "../../..").dir("d").symlink("d/abs", format!("/{outside}"));
    lower.symlink("d/rel", "../../../../..");
    let mut upper = LayerBuilder::new();
    upper.file(format!("evil/{x}"), "through an absolute symlink");
    upper.file(format!("up/{y}"), "through a relative symlink");
    upper.file(format!("d/abs/{z}"), "through a symlink to a missing directory");
    upper.file(format!("d/rel/{w}"), "through a symlink that climbs past the root");
    upper.hardlink("hl", format!("evil/{x}"));
    let image = Image::from_tars(vec![lower.finish(), upper.finish()], Compression::Gzip);
    let img = Indexed::new(&image);

    // Extract into a fresh directory inside a fresh parent: afterwards the parent holds only the target.
    let parent = tempfile::tempdir().unwrap();
    let target = parent.path().join("rootfs");
    clip_ok(&["extract", s(&img.index()), s(&target)]);
    let beside: Vec<_> = std::fs::read_dir(parent.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside, [OsStr::new("rootfs")], "extract wrote next to its target");
    for name in [&x, &y, &z, &w, &outside] {
        assert!(!Path::new("/").join(name).exists(), "/{name} was written outside the target");
        assert!(!Path::new("/tmp").join(name).exists(), "/tmp/{name} was written outside the target");
    }
    // The files landed inside the root, where umoci puts them.
    assert_eq!(std::fs::read(target.join(&x)).unwrap(), b"through an absolute symlink");
    assert_eq!(std::fs::read(target.join(&y)).unwrap(), b"through a relative symlink");
    assert_eq!(std::fs::read(target.join(&outside).join(&z)).unwrap(), b"through a symlink to a missing directory");
    assert_eq!(std::fs::read(target.join(&w)).unwrap(), b"through a symlink that climbs past the root");
    assert_eq!(std::fs::read_link(target.join("evil")).unwrap(), Path::new("/"), "symlinks are kept as they are");
    // umoci creates the missing directory with the current time, clip with time 0.
    assert_matches_umoci(img.layout.path(), "t", &target, CompareOpts::default().ignoring_mtime_of([&outside]));
}

#[test]
fn hard_links_out_of_the_root_are_refused_or_kept_inside() {
    for link_target in ["../../../etc/hostname", "/etc/hostname"] {
        let mut l = LayerBuilder::new();
        l.file("etc/hostname", "inside");
        l.hardlink("hl", link_target);
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("t", &Image::from_tars(vec![l.finish()], Compression::None));
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("x.clip");
        let out = clip(&["index", &format!("oci:{}:t", layout.path().display()), "-o", s(&index)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{link_target}: {stderr}");
        if !out.status.success() {
            assert!(stderr.contains("error:"), "{link_target}: {stderr}");
            println!("hard link to {link_target}: refused: {}", stderr.trim());
            continue;
        }
        let target = dir.path().join("rootfs");
        clip_ok(&["extract", s(&index), s(&target)]);
        // A link inside the root, to the root's own file (never to the host's /etc/hostname).
        assert_eq!(std::fs::read(target.join("hl")).unwrap(), b"inside", "{link_target}");
        println!("hard link to {link_target}: resolved inside the root");
    }
}

#[test]
fn a_zstd_decompression_bomb_is_refused() {
    // 256 MiB of zeros make a zstd frame of a few KiB: a ratio in the tens of thousands.
    let mut l = LayerBuilder::new();
    l.file("zeros", vec![0u8; 256 << 20]);
    let layer = Layer::new(l.finish(), Compression::Zstd);
    assert!(layer.blob().len() < 1 << 20);
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::new(vec![layer]));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.clip");
    clip_fails(&["index", &format!("oci:{}:t", layout.path().display()), "-o", s(&out)], "decompression bomb");
    assert!(!out.exists());
}

#[test]
fn a_directory_of_100_000_entries_indexes_lists_and_mounts() {
    const N: usize = 100_000;
    let mut l = LayerBuilder::new();
    l.dir("many");
    for i in 0..N {
        l.file(format!("many/{i:06}"), if i % 1000 == 0 { format!("file {i}\n") } else { String::new() });
    }
    let img = Indexed::new(&Image::from_tars(vec![l.finish()], Compression::Gzip));

    let listed = clip_ok(&["ls", s(&img.index()), "/many"]);
    assert_eq!(listed.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), N);

    let metrics = format!("127.0.0.1:{}", find_free_port());
    let m = MountProc::start(&img.index(), &img.dir.path().join("mnt"), &["--no-cache", "--metrics", &metrics]);
    let started = Instant::now();
    let mut names: Vec<_> = std::fs::read_dir(m.dir.join("many")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let readdir = started.elapsed();
    // Like `ls -l`: stat every entry, after listing them all. The attributes came with the listing (full
    // READDIRPLUS entries, but for one names-only batch that shows whether the process stats what it
    // lists), so this costs no round trip per file.
    let lookups = || metric(&metrics, "clip_fuse_requests_total{op=\"lookup\"}");
    let before = lookups();
    let empty = names.iter().filter(|n| std::fs::symlink_metadata(m.dir.join("many").join(n)).unwrap().len() == 0);
    assert_eq!(empty.count(), N - N / 1000);
    let per_file = lookups() - before;
    assert!(per_file < (N / 100) as f64, "{per_file} LOOKUPs to stat {N} listed files");
    names.sort();
    assert_eq!(names.len(), N);
    assert_eq!(names[0], "000000");
    assert_eq!(names[N - 1], format!("{:06}", N - 1).as_str());
    for i in [0, 1, 54_321, N - 1000] {
        let p = m.dir.join(format!("many/{i:06}"));
        let expected = if i % 1000 == 0 { format!("file {i}\n") } else { String::new() };
        assert_eq!(std::fs::metadata(&p).unwrap().len(), expected.len() as u64);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), expected);
    }
    println!("100 000 entries: readdir of the mounted directory took {readdir:?}");
    m.stop();
}

#[test]
fn a_path_10_000_directories_deep_indexes_mounts_and_extracts_or_fails_cleanly() {
    const DEPTH: usize = 10_000;
    let deep = "d/".repeat(DEPTH);
    let mut l = LayerBuilder::new();
    l.file(format!("{deep}bottom"), "at the bottom\n");
    let img = Indexed::new(&Image::from_tars(vec![l.finish()], Compression::Gzip));

    let listed = clip_ok(&["ls", s(&img.index()), &format!("/{deep}")]);
    assert_eq!(listed, b"bottom\n");

    // Walk down the mount one directory at a time (a path this long is beyond PATH_MAX for one syscall).
    let m = img.mount();
    let mut dir = std::fs::File::open(&m.dir).unwrap();
    for _ in 0..DEPTH {
        dir = std::fs::File::open(format!("/proc/self/fd/{}/d", dir.as_raw_fd())).unwrap();
    }
    let bottom = std::fs::read(format!("/proc/self/fd/{}/bottom", dir.as_raw_fd())).unwrap();
    assert_eq!(bottom, b"at the bottom\n");
    drop(dir);
    m.stop();

    // Extracting needs paths longer than PATH_MAX: clip either manages or says why, cleanly.
    let target = img.dir.path().join("rootfs");
    let out = clip(&["extract", s(&img.index()), s(&target)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("overflow"), "{}", &stderr[..stderr.len().min(2000)]);
    if out.status.success() {
        println!("10 000 deep: extracted");
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr.contains("error:") && stderr.contains("too long"),
            "{}",
            &stderr[stderr.len().saturating_sub(500)..]
        );
        println!("10 000 deep: extract failed cleanly: …{}", &stderr[stderr.len().saturating_sub(120)..].trim());
    }
}

#[test]
fn names_with_newlines_and_invalid_utf8_survive_index_mount_and_extract() {
    let names: [&[u8]; 5] = [b"new\nline", b"bad\xff\xfeutf8", b"tab\there", b"sp ace", b"\xe2\x98\x83 snow"];
    let mut l = LayerBuilder::new();
    l.dir("n");
    for (i, name) in names.iter().enumerate() {
        let mut path = b"n/".to_vec();
        path.extend_from_slice(name);
        l.file(path, format!("file {i}"));
    }
    let img = Indexed::new(&Image::from_tars(vec![l.finish()], Compression::Gzip));
    clip_ok(&["ls", s(&img.index()), "/n"]);

    let m = img.mount();
    let mut seen: Vec<Vec<u8>> =
        std::fs::read_dir(m.dir.join("n")).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    seen.sort();
    let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    want.sort();
    assert_eq!(seen, want);
    for (i, name) in names.iter().enumerate() {
        let p = m.dir.join("n").join(OsStr::from_bytes(name));
        assert_eq!(std::fs::read_to_string(p).unwrap(), format!("file {i}"));
    }
    m.stop();

    let target = img.dir.path().join("rootfs");
    clip_ok(&["extract", s(&img.index()), s(&target)]);
    assert_matches_umoci(img.layout.path(), "t", &target, CompareOpts::default());
    assert_eq!(listing(&target.join("n")).len(), names.len());
}

#[test]
fn ls_never_prints_a_control_byte_and_its_json_keeps_names_exact() {
    let mut l = LayerBuilder::new();
    l.dir("n");
    for name in [&b"new\nline"[..], b"\x1b[31mred", b"bad\xff", b"tab\there", b"plain", b"sp ace"] {
        l.file([&b"n/"[..], name].concat(), "x");
    }
    l.symlink("n/zlink", b"\x1b]0;pwned\x07".to_vec());
    let img = Indexed::new(&Image::from_tars(vec![l.finish()], Compression::Gzip));
    let index = img.index();

    // Not a terminal: C escapes, one entry per line.
    let escaped = ["\\033[31mred", "bad\\377", "new\\nline", "plain", "sp ace", "tab\\there", "zlink"];
    let out = clip_ok(&["ls", s(&index), "/n"]);
    assert!(!out.iter().any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f), "{out:?}");
    assert_eq!(String::from_utf8(out).unwrap().lines().collect::<Vec<_>>(), escaped);
    let long = String::from_utf8(clip_ok(&["ls", "-l", s(&index), "/n"])).unwrap();
    assert_eq!(long.lines().count(), escaped.len(), "{long}");
    assert!(long.lines().last().unwrap().ends_with(" zlink -> \\033]0;pwned\\a"), "{long}");

    // On a terminal (a pty from `script`): GNU ls's shell-escape quoting.
    let tty = Command::new("script")
        .args(["-qec", &format!("{} ls {} /n", env!("CARGO_BIN_EXE_clip"), s(&index)), "/dev/null"])
        .env("CLIP_LOG", "warn")
        .output()
        .unwrap();
    assert!(tty.status.success(), "{}", String::from_utf8_lossy(&tty.stderr));
    let shown = String::from_utf8(tty.stdout).unwrap();
    let quoted = [
        "''$'\\033''[31mred'",
        "'bad'$'\\377'",
        "'new'$'\\n''line'",
        "plain",
        "'sp ace'",
        "'tab'$'\\t''here'",
        "zlink",
    ];
    assert_eq!(shown.lines().map(|l| l.trim_end_matches('\r')).collect::<Vec<_>>(), quoted, "{shown:?}");

    // --json: exact names, bytes where they are not UTF-8.
    let json: serde_json::Value = serde_json::from_slice(&clip_ok(&["ls", "--json", s(&index), "/n"])).unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries[0]["name"], "\x1b[31mred");
    assert_eq!(entries[1]["name_bytes"], serde_json::json!([98, 97, 100, 255]));
    assert_eq!(entries[2]["name"], "new\nline");
    assert_eq!(entries[6]["target"], "\x1b]0;pwned\x07");
    assert_eq!((entries[3]["type"].as_str(), entries[3]["size"].as_u64()), (Some("file"), Some(1)));
}

#[test]
fn a_nul_in_a_pax_path_is_refused() {
    let mut l = LayerBuilder::new();
    l.entry(Entry::file("plain", "x").pax("path", b"a\0b".to_vec()));
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::from_tars(vec![l.finish()], Compression::None));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.clip");
    let stderr = clip_fails(&["index", &format!("oci:{}:t", layout.path().display()), "-o", s(&out)], "layer 0");
    assert!(!out.exists(), "{stderr}");
    println!("NUL in a PAX path: {}", stderr.trim());
}
