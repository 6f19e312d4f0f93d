//! `snapshot` + `compare` on real directories: equal trees give no line; a deliberate difference in each
//! field gives a line naming the path and the field; the ignore options work.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::Path;

use clip_testkit::*;
use filetime::FileTime;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    let t = FileTime::from_unix_time(sec, nsec);
    filetime::set_symlink_file_times(path, t, t).expect("set mtime");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A tree with one of every file type, xattrs, a hard-link group and a non-UTF-8 name; every mtime fixed
/// (children first, so directory mtimes stick).
fn make_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    std::fs::create_dir_all(p("d/sub")).expect("mkdir");
    std::fs::write(p("d/file"), "contents").expect("write");
    chmod(&p("d/file"), 0o644);
    std::fs::write(p("d/suid"), "#!/bin/sh").expect("write");
    chmod(&p("d/suid"), 0o4755);
    lchown(p("d/suid"), Some(1000), Some(3_000_000)).expect("chown");
    chmod(&p("d/suid"), 0o4755);
    std::fs::write(p("d/h1"), "linked").expect("write");
    std::fs::hard_link(p("d/h1"), p("d/sub/h2")).expect("link");
    symlink("target-a", p("d/link")).expect("symlink");
    mknod(&p("d/chr"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 3)).expect("mknod");
    nix::unistd::mkfifo(&p("d/fifo"), Mode::from_bits_truncate(0o644)).expect("mkfifo");
    chmod(&p("d/fifo"), 0o644);
    xattr::set(p("d/file"), "user.k", b"v1").expect("xattr");
    xattr::set(p("d/file"), "user.bin", &[0u8, 0xff]).expect("xattr");
    std::fs::write(root.join(OsStr::from_bytes(b"d/caf\xe9")), "latin1").expect("write");
    chmod(&root.join(OsStr::from_bytes(b"d/caf\xe9")), 0o644);
    for (rel, sec) in [("d/file", 1), ("d/suid", 2), ("d/h1", 3), ("d/link", 4), ("d/chr", 5), ("d/fifo", 6)] {
        set_mtime(&p(rel), 1_600_000_000 + sec, 123_456_789);
    }
    set_mtime(&root.join(OsStr::from_bytes(b"d/caf\xe9")), 1_600_000_000, 0);
    set_mtime(&p("d/sub"), 1_500_000_000, 1);
    set_mtime(&p("d"), 1_500_000_000, 2);
}

/// Two equal trees; `mutate` changes the second before it is snapshotted; returns the diff lines.
fn diff_after(mutate: impl FnOnce(&Path), opts: CompareOpts) -> Vec<String> {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    make_tree(a.path());
    make_tree(b.path());
    mutate(b.path());
    compare(&snapshot(a.path()), &snapshot(b.path()), opts)
}

/// Like `diff_after`, but then restores the parent directory's mtime (mutations touch it).
fn diff_after_keeping_dir_mtimes(mutate: impl FnOnce(&Path)) -> Vec<String> {
    diff_after(
        |root| {
            mutate(root);
            set_mtime(&root.join("d/sub"), 1_500_000_000, 1);
            set_mtime(&root.join("d"), 1_500_000_000, 2);
        },
        CompareOpts::default(),
    )
}

#[test]
fn equal_trees_have_no_differences() {
    assert_eq!(diff_after(|_| {}, CompareOpts::default()), Vec::<String>::new());
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path());
    let t = snapshot(a.path());
    assert_eq!(t.node("d/sub/h2").hardlinks, ["d/h1", "d/sub/h2"].map(std::path::PathBuf::from));
    assert_eq!(t.node("d/h1").nlink, 2);
    assert_eq!(t.node("d/chr").kind, FileKind::CharDevice);
    assert_eq!(t.node("d/link").size, Some(8));
    assert_eq!(t.node("d/file").xattr("user.k"), Some(&b"v1"[..]));
    assert!(t.node(".").kind == FileKind::Dir);
}

#[test]
fn each_field_is_reported_with_path_and_values() {
    let outside = tempfile::tempdir().expect("tempdir");
    let outside_link = outside.path().join("link");
    let sha = |s: &str| Digest::sha256(s.as_bytes()).hex().to_owned();
    type Mutation = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Mutation, Vec<String>)> = vec![
        ("mode", Box::new(|r| chmod(&r.join("d/suid"), 0o755)), vec!["d/suid: mode 0104755 != 0100755".into()]),
        (
            "uid",
            Box::new(|r| lchown(r.join("d/link"), Some(7), None).expect("chown")),
            vec!["d/link: uid 0 != 7".into()],
        ),
        (
            "gid",
            Box::new(|r| {
                lchown(r.join("d/suid"), None, Some(5)).expect("chown");
                chmod(&r.join("d/suid"), 0o4755);
            }),
            vec!["d/suid: gid 3000000 != 5".into()],
        ),
        (
            "size and content",
            Box::new(|r| {
                std::fs::write(r.join("d/file"), "longer contents").expect("write");
                set_mtime(&r.join("d/file"), 1_600_000_001, 123_456_789);
            }),
            vec![
                format!("d/file: sha256 {} != {}", sha("contents"), sha("longer contents")),
                "d/file: size 8 != 15".into(),
            ],
        ),
        (
            "same size, other content",
            Box::new(|r| {
                std::fs::write(r.join("d/file"), "CONTENTS").expect("write");
                set_mtime(&r.join("d/file"), 1_600_000_001, 123_456_789);
            }),
            vec![format!("d/file: sha256 {} != {}", sha("contents"), sha("CONTENTS"))],
        ),
        (
            "mtime",
            Box::new(|r| set_mtime(&r.join("d/file"), 1_600_000_001, 123_456_780)),
            vec!["d/file: mtime 1600000001.123456789 != 1600000001.123456780".into()],
        ),
        (
            "rdev",
            Box::new(|r| {
                std::fs::remove_file(r.join("d/chr")).expect("rm");
                mknod(&r.join("d/chr"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 5)).expect("mknod");
                set_mtime(&r.join("d/chr"), 1_600_000_005, 123_456_789);
            }),
            vec!["d/chr: rdev 1:3 != 1:5".into()],
        ),
        (
            "symlink target",
            Box::new(|r| {
                std::fs::remove_file(r.join("d/link")).expect("rm");
                symlink("target-b", r.join("d/link")).expect("symlink");
                set_mtime(&r.join("d/link"), 1_600_000_004, 123_456_789);
            }),
            vec!["d/link: symlink target \"target-a\" != \"target-b\"".into()],
        ),
        (
            "xattrs",
            Box::new(|r| {
                xattr::set(r.join("d/file"), "user.k", b"v2").expect("xattr");
                xattr::remove(r.join("d/file"), "user.bin").expect("xattr");
                xattr::set(r.join("d/suid"), "user.new", b"x").expect("xattr");
            }),
            vec![
                "d/file: xattr user.bin 0x00ff != (absent)".into(),
                "d/file: xattr user.k \"v1\" != \"v2\"".into(),
                "d/suid: xattr user.new (absent) != \"x\"".into(),
            ],
        ),
        (
            "nlink (a link outside the tree)",
            Box::new(move |r| std::fs::hard_link(r.join("d/file"), outside_link).expect("link")),
            vec!["d/file: nlink 1 != 2".into()],
        ),
        (
            "type",
            Box::new(|r| {
                std::fs::remove_file(r.join("d/fifo")).expect("rm");
                std::fs::create_dir(r.join("d/fifo")).expect("mkdir");
            }),
            vec!["d/fifo: type fifo != directory".into(), "d: nlink 3 != 4".into()],
        ),
        (
            "missing and unexpected, non-UTF-8 name",
            Box::new(|r| {
                std::fs::rename(r.join(OsStr::from_bytes(b"d/caf\xe9")), r.join("d/cafe")).expect("mv");
            }),
            vec!["d/caf\\xe9: missing (expected file)".into(), "d/cafe: unexpected file".into()],
        ),
    ];
    for (name, mutate, mut want) in cases {
        let mut got = diff_after_keeping_dir_mtimes(mutate);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn hard_link_groups_are_compared_as_groups() {
    let got = diff_after_keeping_dir_mtimes(|r| {
        std::fs::remove_file(r.join("d/sub/h2")).expect("rm");
        std::fs::write(r.join("d/sub/h2"), "linked").expect("write");
        set_mtime(&r.join("d/sub/h2"), 1_600_000_003, 123_456_789);
    });
    let want = [
        "d/h1: nlink 2 != 1",
        "d/h1: hard links [d/h1, d/sub/h2] != []",
        "d/sub/h2: nlink 2 != 1",
        "d/sub/h2: hard links [d/h1, d/sub/h2] != []",
    ];
    assert_eq!(got, want);
}

#[test]
fn ignore_options() {
    let touch_all = |r: &Path| {
        set_mtime(&r.join("d/file"), 1, 0);
        set_mtime(&r.join("d/link"), 1, 0);
        std::fs::create_dir(r.join("d/sub/more")).expect("mkdir"); // d/sub nlink 2 -> 3
        set_mtime(&r.join("d/sub/more"), 1, 0);
        xattr::set(r.join("d/file"), "user.noise", b"1").expect("xattr");
        set_mtime(&r.join("d/sub"), 1_500_000_000, 1);
        set_mtime(&r.join("d"), 1_500_000_000, 2);
    };
    let strict = diff_after(touch_all, CompareOpts::default());
    assert_eq!(strict.len(), 5, "{strict:#?}");
    let lenient = CompareOpts {
        ignore_symlink_mtime: true,
        ignore_dir_nlink: true,
        ignore_xattrs: vec!["user.noise".into()],
        ..CompareOpts::default()
    }
    .ignoring_mtime_of(["d/file"]);
    assert_eq!(diff_after(touch_all, lenient), ["d/sub/more: unexpected directory"]);

    // The root's mtime is ignored by default only.
    let root_touched = |r: &Path| set_mtime(r, 42, 0);
    assert_eq!(diff_after(root_touched, CompareOpts::default()), Vec::<String>::new());
    let strict_root = CompareOpts { ignore_root_mtime: false, ..CompareOpts::default() };
    let got = diff_after(root_touched, strict_root);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].starts_with(".: mtime ") && got[0].ends_with(" != 42.000000000"), "{got:#?}");
}

#[test]
fn assert_trees_equal_panics_with_the_differences() {
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path());
    let mut t = snapshot(a.path());
    let same = t.clone();
    assert_trees_equal(&same, &t, CompareOpts::default());
    if let Some(n) = t.nodes.get_mut(Path::new("d/file")) {
        n.mode = 0o100600;
    }
    let err =
        std::panic::catch_unwind(|| assert_trees_equal(&same, &t, CompareOpts::default())).expect_err("must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("1 difference(s)") && msg.contains("d/file: mode 0100644 != 0100600"), "{msg}");
}
