//! The conformance image through the oracle: built as gzip, zstd, uncompressed (and odd encodings), each
//! unpacked by umoci; the trees must be equal and hold every edge case of the correctness reference.

use std::path::Path;

use clip_testkit::conformance::*;
use clip_testkit::*;

fn unpack(image: &Image) -> (Tree, Unpacked) {
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("conformance", image);
    let unpacked = umoci_unpack(layout.path(), "conformance");
    (snapshot(&unpacked.rootfs()), unpacked)
}

fn contents(root: &Path, rel: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(root.join(rel)).expect(rel)).into_owned()
}

#[test]
fn compressions_unpack_to_the_same_tree() {
    let (gzip, _g) = unpack(&conformance_image(Compression::Gzip));
    let (zstd, _z) = unpack(&conformance_image(Compression::Zstd));
    let (none, _n) = unpack(&conformance_image(Compression::None));
    let mixed = conformance_image_mixed(&[Compression::Zstd, Compression::None, Compression::Gzip]);
    let (mixed, _m) = unpack(&mixed);
    let tars = conformance_layers();
    let odd = Image::new(
        tars.iter()
            .enumerate()
            .map(|(i, t)| {
                if i % 2 == 0 {
                    Layer::from_blob(t.clone(), gzip_multi_member(t, 3), Compression::Gzip)
                } else {
                    Layer::from_blob(t.clone(), zstd_multi_frame(t, 1000), Compression::Zstd)
                }
            })
            .collect(),
    );
    let (odd, _o) = unpack(&odd);
    let opts = CompareOpts::conformance();
    for (name, tree) in [("zstd", &zstd), ("none", &none), ("mixed", &mixed), ("multi-member/frame", &odd)] {
        let diffs = compare(&gzip, tree, &opts);
        assert!(diffs.is_empty(), "gzip vs {name}:\n{}", diffs.join("\n"));
    }
    // Without the conformance options, the only differences are the implicit directories' mtimes (umoci
    // stamps them with the unpack time): everything else is deterministic and was compared.
    assert!(gzip.len() > 80, "only {} paths", gzip.len());
    for diff in compare(&gzip, &none, CompareOpts::default()) {
        let implicit = IMPLICIT_DIRS.iter().any(|d| diff.starts_with(&format!("{d}: mtime ")));
        assert!(implicit, "unexpected difference: {diff}");
    }
}

#[test]
fn umoci_tree_holds_every_edge_case() {
    let (t, unpacked) = unpack(&conformance_image(Compression::Gzip));
    let root = unpacked.rootfs();

    // Whiteouts: a file, a directory with contents; same-layer whiteout/re-add in both orders; a whiteout
    // of a hard-link name and of a symlink.
    assert!(!t.contains("etc/removed"));
    assert!(!t.contains("etc/removed-dir"));
    assert!(!t.contains("etc/removed-dir/inner"));
    assert!(!t.contains("etc/.wh.removed"), "whiteout files must not appear");
    assert!(!t.contains("etc/.wh.never-existed"));
    assert_eq!(contents(&root, "etc/wh-then-add"), "layer 2\n");
    assert_eq!(contents(&root, "etc/add-then-wh"), "layer 2\n");
    assert!(!t.contains("links/w2"));
    assert_eq!(t.node("links/w1").nlink, 1);
    assert!(!t.contains("sym/dir"));

    // Modified file: contents and mode from layer 2.
    assert_eq!(contents(&root, "etc/hostname"), "upper\n");
    assert_eq!(t.node("etc/hostname").mode, 0o100600);

    // Opaque directory: same-layer entries before and after the marker survive; lower ones are gone.
    assert_eq!(
        t.children("opaque"),
        ["opaque/after-marker", "opaque/before-marker", "opaque/lower-file", "opaque/new-dir"]
            .map(std::path::PathBuf::from)
    );
    assert_eq!(contents(&root, "opaque/lower-file"), "layer 2, re-added before the marker\n");
    assert!(!t.contains("opaque/.wh..wh..opq"));
    // An opaque marker alone empties the directory, which keeps its own metadata.
    assert!(t.children("wipe").is_empty());
    assert_eq!(t.node("wipe").kind, FileKind::Dir);

    // File → dir → file and dir → file → dir.
    assert_eq!(t.node("replace/file-then-dir").kind, FileKind::File);
    assert_eq!(contents(&root, "replace/file-then-dir"), "a file again in layer 3\n");
    assert_eq!(t.node("replace/dir-then-file").kind, FileKind::Dir);
    assert_eq!(t.children("replace/dir-then-file"), [std::path::PathBuf::from("replace/dir-then-file/again")]);

    // Hard links.
    let group: Vec<std::path::PathBuf> = ["links/a", "links/b", "links/sub/c"].map(Into::into).to_vec();
    for p in &group {
        assert_eq!(t.node(p).nlink, 3, "{}", p.display());
        assert_eq!(t.node(p).hardlinks, group);
        assert_eq!((t.node(p).uid, t.node(p).mode), (1000, 0o100640));
    }
    assert_eq!(t.node("links/g1").nlink, 2);
    assert_eq!(t.node("links/g1").hardlinks, ["links/g1", "links/g3"].map(std::path::PathBuf::from));
    assert_eq!(t.node("links/g2").nlink, 1);
    assert_eq!(contents(&root, "links/g2"), "g2 overwritten in layer 2\n");
    assert_eq!(contents(&root, "links/g3"), "group whose g2 is overwritten\n");
    assert_eq!(t.node("links/upper-link").nlink, 2);
    assert_eq!(
        t.node("links/upper-link").hardlinks,
        ["links/lower-target", "links/upper-link"].map(std::path::PathBuf::from)
    );
    assert_eq!(t.node(long_hardlink_name()).hardlinks.len(), 2);

    // Symlinks.
    assert_eq!(t.node("sym/rel").symlink_target.as_deref(), Some(&b"../etc/hostname"[..]));
    assert_eq!(t.node("sym/abs").symlink_target.as_deref(), Some(&b"/etc/hostname"[..]));
    assert_eq!(t.node("sym/dangling").symlink_target.as_deref(), Some(&b"does/not/exist"[..]));
    assert_eq!(t.node("sym/odd-mode").mode, 0o120777);
    assert!(t.node("long/link-gnu").symlink_target.as_ref().is_some_and(|l| l.len() > 200));
    assert_eq!(t.node("long/link-gnu").symlink_target, t.node("long/link-pax").symlink_target);

    // Devices and FIFOs.
    let null = t.node("dev/null");
    assert_eq!((null.kind, null.rdev_major(), null.rdev_minor(), null.mode), (FileKind::CharDevice, 1, 3, 0o20666));
    let lp = t.node("dev/loop0");
    assert_eq!((lp.kind, lp.rdev_major(), lp.rdev_minor(), lp.gid), (FileKind::BlockDevice, 7, 0, 6));
    let big = t.node("dev/big");
    assert_eq!((big.rdev_major(), big.rdev_minor()), (511, 70_000));
    assert_eq!(t.node("dev/fifo").kind, FileKind::Fifo);
    assert_eq!(t.node("dev/fifo").mode, 0o10620);

    // Special bits; type bits in the tar mode field are ignored.
    assert_eq!(t.node("perm/setuid").mode, 0o104755);
    assert_eq!(t.node("perm/setgid").mode, 0o102755);
    assert_eq!(t.node("perm/sticky").mode, 0o41777);
    assert_eq!(t.node("perm/setgid-dir").mode, 0o42775);
    assert_eq!(t.node("perm/all-bits").mode, 0o107777);
    assert_eq!(t.node("perm/none").mode, 0o100000);
    assert_eq!(t.node("perm/type-bits-in-mode").mode, 0o100644);

    // Big owners.
    assert_eq!((t.node("owners/pax").uid, t.node("owners/pax").gid), (BIG_UID as u32, BIG_GID as u32));
    let b = t.node("owners/base256");
    assert_eq!((b.uid, b.gid), (BASE256_UID as u32, BASE256_GID as u32));
    assert_eq!(t.node("owners/octal-max").uid, OCTAL_MAX_ID as u32);
    assert_eq!(t.node("owners/setuid-big").mode, 0o104750);
    assert_eq!(t.node("owners/big-dir").uid, BIG_UID as u32);
    assert_eq!(t.node("owners/big-link").gid, BIG_GID as u32);

    // mtimes with nanoseconds, on files, a symlink and a directory with children.
    let ns = t.node("times/ns");
    assert_eq!((ns.mtime_sec, ns.mtime_nsec), (NS_MTIME.0 as i64, i64::from(NS_MTIME.1)));
    let far = t.node("times/far");
    assert_eq!((far.mtime_sec, far.mtime_nsec), (FAR_MTIME.0 as i64, i64::from(FAR_MTIME.1)));
    assert_eq!(t.node("times/epoch").mtime_sec, 0);
    assert_eq!((t.node("times/link").mtime_sec, t.node("times/link").mtime_nsec), (1_500_000_000, 42));
    assert_eq!((t.node("times").mtime_sec, t.node("times").mtime_nsec), (1_650_000_000, 987_654_321));
    assert_eq!(t.node("etc").mtime_sec, DEFAULT_MTIME as i64, "whiteouts must not touch the parent's mtime");

    // xattrs.
    assert_eq!(t.node("xattr/user").xattr("user.greeting"), Some(&b"hello"[..]));
    assert_eq!(t.node("xattr/user").xattr("user.binary"), Some(&[0u8, 1, 2, 0xff][..]));
    assert_eq!(
        t.node("xattr/cap").xattr("security.capability"),
        Some(capability_v2(1 << CAP_NET_BIND_SERVICE, 0, true).as_slice())
    );
    assert_eq!(t.node("xattr/dir").xattr("user.on-dir"), Some(&b"yes"[..]));

    // Long and non-ASCII names (one not UTF-8).
    for name in [long_pax_name(), long_gnu_name(), long_prefix_name()] {
        assert_eq!(t.node(&name).kind, FileKind::File, "{name}");
    }
    for name in ["unicode/日本語.txt", "unicode/café", "unicode/with space", "unicode/Ünïcödé/emoji-🦀"] {
        assert!(t.contains(name), "{name}");
    }
    use std::os::unix::ffi::OsStrExt;
    assert!(t.contains(std::ffi::OsStr::from_bytes(b"unicode/latin1-caf\xe9")));

    // Implicit parents, in a new path and under a directory of a lower layer.
    for dir in IMPLICIT_DIRS {
        assert_eq!(t.node(dir).kind, FileKind::Dir, "{dir}");
    }
    assert!(t.contains("implicit/a/b/file"));
    assert!(t.contains("etc/only-in-3"));
    assert_eq!(t.node("etc").mode, 0o40755);

    // Empty file; re-declared directory.
    assert_eq!(t.node("empty").size, Some(0));
    let r = t.node("redeclared");
    assert_eq!((r.mode, r.uid, r.gid, r.mtime_sec), (0o40700, 1234, 5678, 1_650_000_000));
    assert!(t.contains("redeclared/keep"));
}

#[test]
fn layers_parse_with_the_tar_crate() {
    // An independent reader agrees with the encodings (PAX, GNU long names, base-256, prefix).
    let tars = conformance_layers();
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(tars[0].as_slice());
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path_bytes().into_owned();
        let uid = entry.header().uid().expect("uid");
        if path == b"owners/base256" {
            assert_eq!(uid, BASE256_UID);
        }
        if path == b"owners/pax" {
            let pax = entry.pax_extensions().expect("pax").expect("has pax");
            let uid: Vec<_> = pax.filter_map(Result::ok).filter(|e| e.key() == Ok("uid")).collect();
            assert_eq!(uid[0].value(), Ok("3000000"));
        }
        if path == b"xattr/cap" {
            let pax = entry.pax_extensions().expect("pax").expect("has pax");
            let cap: Vec<_> =
                pax.filter_map(Result::ok).filter(|e| e.key() == Ok("SCHILY.xattr.security.capability")).collect();
            assert_eq!(cap[0].value_bytes(), capability_v2(1 << CAP_NET_BIND_SERVICE, 0, true));
        }
        names.push(path);
    }
    for long in [long_pax_name(), long_gnu_name(), long_prefix_name(), long_hardlink_name()] {
        assert!(names.contains(&long.into_bytes()));
    }
}
