//! Merge tests on hand-made entries, one per case of DESIGN.md's correctness reference.

use std::collections::BTreeMap;

use clip_format::{mode, Content, DataRef, Ino, LayerIndex, NodeSpec, Timestamp, Xattr};

use super::*;

fn entry(path: &str, kind: EntryKind) -> TarEntry {
    TarEntry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        size: 0,
        mtime: Timestamp { sec: 1_000, nsec: 0 },
        link_target: Vec::new(),
        dev_major: 0,
        dev_minor: 0,
        xattrs: Vec::new(),
        data_offset: 0,
        header_offset: 0,
    }
}

fn file(path: &str, offset: u64) -> TarEntry {
    TarEntry { size: 10, data_offset: offset, ..entry(path, EntryKind::File) }
}

fn dir(path: &str) -> TarEntry {
    entry(path, EntryKind::Dir)
}

fn symlink(path: &str, target: &str) -> TarEntry {
    TarEntry { link_target: target.as_bytes().to_vec(), ..entry(path, EntryKind::Symlink) }
}

fn hardlink(path: &str, target: &str) -> TarEntry {
    TarEntry { link_target: target.as_bytes().to_vec(), ..entry(path, EntryKind::HardLink) }
}

/// The merged tree by path.
struct View {
    specs: Vec<NodeSpec>,
    paths: BTreeMap<String, usize>,
}

impl View {
    fn new(specs: Vec<NodeSpec>) -> View {
        let mut paths = BTreeMap::new();
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((path, index)) = stack.pop() {
            if let Content::Dir(children) = &specs[index].content {
                for (name, ino) in children {
                    let child = format!("{path}/{}", String::from_utf8_lossy(name));
                    stack.push((child, ino.index()));
                }
            }
            paths.insert(path, index);
        }
        View { specs, paths }
    }

    fn index(&self, path: &str) -> usize {
        *self.paths.get(path).unwrap_or_else(|| panic!("{path} missing; have {:?}", self.paths.keys()))
    }

    fn get(&self, path: &str) -> &NodeSpec {
        &self.specs[self.index(path)]
    }

    fn has(&self, path: &str) -> bool {
        self.paths.contains_key(path)
    }

    /// Every path, the root as "".
    fn all(&self) -> Vec<&str> {
        self.paths.keys().map(String::as_str).collect()
    }

    fn data(&self, path: &str) -> DataRef {
        match self.get(path).content {
            Content::File(data) => data,
            ref other => panic!("{path} is {other:?}"),
        }
    }

    fn nlink(&self, path: &str) -> usize {
        let ino = Ino::from_index(self.index(path));
        self.specs
            .iter()
            .filter_map(|s| match &s.content {
                Content::Dir(children) => Some(children.iter().filter(|(_, i)| *i == ino).count()),
                _ => None,
            })
            .sum()
    }
}

fn merge(layers: Vec<Vec<TarEntry>>) -> View {
    let mut m = Merger::new();
    for (i, layer) in layers.into_iter().enumerate() {
        m.apply_layer(LayerIndex::from_index(i), layer).unwrap();
    }
    View::new(m.finish())
}

fn merge_err(layers: Vec<Vec<TarEntry>>) -> MergeError {
    let mut m = Merger::new();
    for (i, layer) in layers.into_iter().enumerate() {
        if let Err(e) = m.apply_layer(LayerIndex::from_index(i), layer) {
            return e;
        }
    }
    panic!("the merge should fail")
}

#[test]
fn empty_image_is_the_default_root() {
    let v = merge(vec![]);
    assert_eq!(v.specs.len(), 1);
    let root = &v.specs[0];
    assert_eq!((root.mode, root.uid, root.gid, root.mtime), (mode::S_IFDIR | 0o755, 0, 0, Timestamp::default()));
    assert_eq!(root.content, Content::Dir(vec![]));
}

#[test]
fn whiteout_removes_the_subtree() {
    let v = merge(vec![
        vec![dir("a"), dir("a/b"), file("a/b/c", 1), file("a/d", 2), file("e", 3)],
        vec![file("a/.wh.b", 0), file(".wh.missing", 0), file("nodir/.wh.x", 0)],
    ]);
    assert_eq!(v.all(), ["", "/a", "/a/d", "/e"]);
}

#[test]
fn opaque_keeps_entries_of_its_own_layer_before_and_after_the_marker() {
    let v = merge(vec![
        vec![dir("d"), file("d/old", 1), dir("d/sub"), file("d/sub/x", 2), file("top", 3)],
        vec![file("d/new1", 4), file("d/.wh..wh..opq", 0), file("d/new2", 5)],
    ]);
    assert_eq!(v.all(), ["", "/d", "/d/new1", "/d/new2", "/top"]);
    assert_eq!(v.data("/d/new1").layer, LayerIndex(1));
}

#[test]
fn opaque_strips_lower_children_of_redeclared_dirs() {
    let mut sub = dir("d/sub");
    sub.mode = 0o700;
    let v = merge(vec![
        vec![
            dir("d"),
            dir("d/sub"),
            file("d/sub/x", 1),
            file("d/sub/y", 2),
            file("d/keep", 3),
            dir("d/pass"),
            file("d/pass/lower", 4),
            dir("d/pass/deep"),
            file("d/pass/deep/lower", 5),
        ],
        vec![file("d/.wh..wh..opq", 0), sub, file("d/sub/z", 6), file("d/pass/deep/new", 7)],
    ]);
    assert_eq!(v.all(), ["", "/d", "/d/pass", "/d/pass/deep", "/d/pass/deep/new", "/d/sub", "/d/sub/z"]);
    assert_eq!(v.get("/d/sub").mode, mode::S_IFDIR | 0o700);
}

#[test]
fn whiteout_in_the_same_layer_spares_what_that_layer_made() {
    let v = merge(vec![
        vec![dir("d"), file("d/lower", 1), file("f", 2)],
        vec![file("f", 3), file(".wh.f", 0), dir("d"), file("d/upper", 4), file(".wh.d", 0)],
    ]);
    assert_eq!(v.all(), ["", "/d", "/d/upper", "/f"]);
    assert_eq!(v.data("/f").layer, LayerIndex(1));
}

#[test]
fn file_dir_file_replacement() {
    let mut m = Merger::new();
    m.apply_layer(LayerIndex(0), vec![file("x", 1)]).unwrap();
    m.apply_layer(LayerIndex(1), vec![dir("x"), file("x/y", 2), dir("x/z")]).unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(View::new(m.finish()).all(), ["", "/x", "/x/y", "/x/z"]);
    let v = merge(vec![vec![file("x", 1)], vec![dir("x"), file("x/y", 2)], vec![file("x", 3)]]);
    assert_eq!(v.all(), ["", "/x"]);
    assert_eq!(v.data("/x"), DataRef { layer: LayerIndex(2), offset: 3, size: 10 });
    // And within one layer.
    let v = merge(vec![vec![dir("x"), file("x/y", 2), file("x", 3), symlink("x", "elsewhere")]]);
    assert_eq!(v.all(), ["", "/x"]);
    assert_eq!(v.get("/x").content, Content::Symlink(b"elsewhere".to_vec()));
}

#[test]
fn hard_link_group_with_a_name_overwritten_later() {
    let mut m = Merger::new();
    m.apply_layer(LayerIndex(0), vec![file("a", 100), hardlink("b", "a"), hardlink("c", "a")]).unwrap();
    assert_eq!(m.len(), 2, "one inode for three names");
    m.apply_layer(LayerIndex(1), vec![file("b", 200)]).unwrap();
    assert_eq!(m.len(), 3);
    let v = View::new(m.finish());
    assert_eq!(v.index("/a"), v.index("/c"));
    assert_ne!(v.index("/a"), v.index("/b"));
    assert_eq!((v.nlink("/a"), v.nlink("/b")), (2, 1));
    assert_eq!(v.data("/a"), DataRef { layer: LayerIndex(0), offset: 100, size: 10 });
    assert_eq!(v.data("/b"), DataRef { layer: LayerIndex(1), offset: 200, size: 10 });
    // Whiting out one name keeps the other.
    let v = merge(vec![vec![file("a", 100), hardlink("c", "a")], vec![file(".wh.a", 0)]]);
    assert_eq!(v.all(), ["", "/c"]);
    assert_eq!(v.data("/c").offset, 100);
}

#[test]
fn hard_link_to_a_lower_layer_file() {
    let mut f = file("usr/bin/f", 42);
    f.mode = 0o4755;
    f.uid = 7;
    let mut link = hardlink("usr/bin/g", "usr/bin/f");
    link.mode = 0o600; // hard links carry no attributes
    let v = merge(vec![vec![dir("usr"), dir("usr/bin"), f], vec![link]]);
    assert_eq!(v.index("/usr/bin/f"), v.index("/usr/bin/g"));
    assert_eq!(v.nlink("/usr/bin/g"), 2);
    let g = v.get("/usr/bin/g");
    assert_eq!((g.mode, g.uid), (mode::S_IFREG | 0o4755, 7));
    assert_eq!(v.data("/usr/bin/g"), DataRef { layer: LayerIndex(0), offset: 42, size: 10 });
}

#[test]
fn hard_link_errors_name_both_paths() {
    let err = merge_err(vec![vec![hardlink("l", "nowhere/t")]]);
    let msg = err.to_string();
    assert!(matches!(err, MergeError::HardLinkTargetMissing { .. }));
    assert!(msg.contains("\"l\"") && msg.contains("nowhere/t"), "{msg}");
    let err = merge_err(vec![vec![dir("d"), hardlink("l", "d")]]);
    assert!(
        matches!(err, MergeError::HardLinkToDirectory { ref path, ref target, .. } if path == "l" && target == "d")
    );
    assert!(matches!(merge_err(vec![vec![hardlink("l", "")]]), MergeError::HardLinkToDirectory { .. }));
    // A link to itself: the old name goes first, so the target is gone.
    let err = merge_err(vec![vec![file("s", 1)], vec![hardlink("s", "s")]]);
    assert!(matches!(err, MergeError::HardLinkTargetMissing { .. }));
}

#[test]
fn hard_link_to_a_symlink_names_the_symlink() {
    let v = merge(vec![vec![symlink("s", "target"), hardlink("h", "s")]]);
    assert_eq!(v.index("/s"), v.index("/h"));
    assert_eq!(v.get("/h").content, Content::Symlink(b"target".to_vec()));
}

#[test]
fn implicit_parents() {
    let mut f = file("a/b/c", 9);
    f.uid = 5;
    let v = merge(vec![vec![f]]);
    for p in ["/a", "/a/b"] {
        let d = v.get(p);
        assert_eq!((d.mode, d.uid, d.gid, d.mtime), (mode::S_IFDIR | 0o755, 0, 0, Timestamp::default()));
        assert!(d.xattrs.is_empty());
    }
    assert_eq!(v.get("/a/b/c").uid, 5);
}

#[test]
fn non_directory_in_the_way_is_an_error() {
    let err = merge_err(vec![vec![file("a", 1)], vec![file("a/b/c", 2)]]);
    match err {
        MergeError::NotADirectory { layer, path, component } => {
            assert_eq!((layer, path.as_str(), component.as_str()), (LayerIndex(1), "a/b/c", "a"));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn dir_metadata_update_keeps_children() {
    let mut d0 = dir("d");
    d0.mode = 0o700;
    d0.uid = 1;
    d0.xattrs = vec![Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() }];
    let mut d1 = dir("d");
    d1.mode = 0o2775;
    d1.uid = 2;
    d1.gid = 3;
    d1.mtime = Timestamp { sec: 5, nsec: 6 };
    d1.xattrs = vec![Xattr { name: b"user.b".to_vec(), value: b"2".to_vec() }];
    let v = merge(vec![vec![d0, file("d/f", 1)], vec![d1]]);
    let d = v.get("/d");
    assert_eq!((d.mode, d.uid, d.gid, d.mtime), (mode::S_IFDIR | 0o2775, 2, 3, Timestamp { sec: 5, nsec: 6 }));
    assert_eq!(d.xattrs, vec![Xattr { name: b"user.b".to_vec(), value: b"2".to_vec() }]);
    assert!(v.has("/d/f"));
}

#[test]
fn root_entry_updates_root_metadata() {
    let mut root = dir("");
    root.mode = 0o700;
    root.uid = 9;
    root.mtime = Timestamp { sec: 77, nsec: 1 };
    let v = merge(vec![vec![file("x", 1)], vec![root]]);
    let r = &v.specs[0];
    assert_eq!((r.mode, r.uid, r.mtime.sec), (mode::S_IFDIR | 0o700, 9, 77));
    assert!(v.has("/x"));
    let err = merge_err(vec![vec![file("", 1)]]);
    assert!(matches!(err, MergeError::RootNotDir { kind: EntryKind::File, .. }));
}

#[test]
fn attributes_of_every_kind() {
    let mut f = file("f", 1);
    f.mode = 0o106_755; // type bits from the header are ignored, setuid kept
    f.xattrs = vec![
        Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2] },
        Xattr { name: b"security.selinux".to_vec(), value: b"ctx".to_vec() },
        Xattr { name: b"trusted.overlay.opaque".to_vec(), value: b"y".to_vec() },
    ];
    let mut s = symlink("s", "/abs/dangling");
    s.mode = 0o600;
    let mut c = entry("c", EntryKind::CharDevice);
    (c.dev_major, c.dev_minor) = (1, 3);
    let mut b = entry("b", EntryKind::BlockDevice);
    (b.dev_major, b.dev_minor) = (8, 1);
    let mut t = dir("t");
    t.mode = 0o1777;
    let v = merge(vec![vec![f, s, c, b, entry("p", EntryKind::Fifo), t]]);
    assert_eq!(v.get("/f").mode, mode::S_IFREG | 0o6755);
    assert_eq!(v.get("/f").xattrs, vec![Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2] }]);
    assert_eq!(v.get("/s").mode, mode::S_IFLNK | 0o777);
    assert_eq!(v.get("/s").content, Content::Symlink(b"/abs/dangling".to_vec()));
    assert_eq!(v.get("/c").mode, mode::S_IFCHR | 0o644);
    assert_eq!(v.get("/c").content, Content::Device { major: 1, minor: 3 });
    assert_eq!(v.get("/b").mode, mode::S_IFBLK | 0o644);
    assert_eq!(v.get("/p").mode, mode::S_IFIFO | 0o644);
    assert_eq!(v.get("/p").content, Content::Special);
    assert_eq!(v.get("/t").mode, mode::S_IFDIR | 0o1777);
}

#[test]
fn symlinks_in_parent_paths_are_followed_inside_the_root() {
    let v = merge(vec![
        vec![
            dir("usr"),
            dir("usr/lib"),
            symlink("lib", "usr/lib"),
            symlink("abs", "/usr/lib"),
            symlink("up", "../../../usr"),
            symlink("dangling", "nonexistent/dir"),
        ],
        vec![
            file("lib/a", 1),
            file("abs/b", 2),
            file("up/c", 3),
            file("dangling/d", 4),
            file("lib/.wh.a", 0),
            file("usr/lib/e", 5),
            file("abs/.wh.e", 0),
        ],
    ]);
    assert_eq!(
        v.all(),
        [
            "",
            "/abs",
            "/dangling",
            "/lib",
            "/nonexistent",
            "/nonexistent/dir",
            "/nonexistent/dir/d",
            "/up",
            "/usr",
            "/usr/c",
            "/usr/lib",
            "/usr/lib/a",
            "/usr/lib/b",
            "/usr/lib/e",
        ],
        "same-layer files survive their whiteouts, reached through symlinks too"
    );
    assert_eq!(v.get("/lib").content, Content::Symlink(b"usr/lib".to_vec()));
    // A whiteout in a later layer goes through the symlink.
    let v = merge(vec![vec![dir("real"), file("real/x", 1), symlink("l", "real")], vec![file("l/.wh.x", 0)]]);
    assert_eq!(v.all(), ["", "/l", "/real"]);
    // The last component is never followed: a directory entry replaces a symlink.
    let v = merge(vec![vec![dir("real"), file("real/x", 1), symlink("l", "real")], vec![dir("l")]]);
    assert!(v.get("/l").mode & mode::S_IFDIR != 0);
    assert!(v.has("/real/x"));
    // Hard-link targets resolve their directory part the same way.
    let v = merge(vec![vec![dir("real"), file("real/x", 1), symlink("l", "real")], vec![hardlink("h", "l/x")]]);
    assert_eq!(v.index("/h"), v.index("/real/x"));
}

#[test]
fn symlink_loops_and_bad_targets() {
    let err = merge_err(vec![vec![symlink("a", "b"), symlink("b", "a/x")], vec![file("a/f", 1)]]);
    assert!(matches!(err, MergeError::SymlinkLoop { layer: LayerIndex(1), .. }), "{err}");
    let err = merge_err(vec![vec![symlink("s", "")]]);
    assert!(matches!(err, MergeError::BadSymlinkTarget { .. }));
    let err = merge_err(vec![vec![symlink("s", &"x".repeat(4096))]]);
    assert!(matches!(err, MergeError::BadSymlinkTarget { .. }));
}

#[test]
fn hostile_names() {
    for name in [".wh.", "d/.wh..", "d/.wh..."] {
        let err = merge_err(vec![vec![dir("d"), file(name, 0)]]);
        assert!(matches!(err, MergeError::BadWhiteout { .. }), "{name}: {err}");
    }
    for path in ["a/../b", "/abs", "a//b", "./a"] {
        assert!(matches!(merge_err(vec![vec![file(path, 0)]]), MergeError::InvalidPath { .. }), "{path}");
    }
    let long = "n".repeat(256);
    assert!(matches!(merge_err(vec![vec![file(&long, 0)]]), MergeError::NameTooLong { .. }));
}

/// Run `f` on a thread with a small stack: anything recursive over depth or width would overflow it.
fn small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().unwrap();
}

#[test]
fn deep_paths_do_not_recurse() {
    small_stack(|| {
        let deep: String = ["d"; 10_000].join("/");
        let mut m = Merger::new();
        m.apply_layer(LayerIndex(0), vec![file(&format!("{deep}/f"), 1), file(&format!("{deep}/g"), 2)]).unwrap();
        assert_eq!(m.len(), 1 + 10_000 + 2);
        m.apply_layer(LayerIndex(1), vec![file(&format!("{deep}/h"), 3), file(".wh..wh..opq", 0)]).unwrap();
        assert_eq!(m.len(), 1 + 10_000 + 1, "the opaque root keeps the layer's own path, drops f and g");
        let specs = m.finish();
        assert_eq!(specs.len(), 10_002);
        let mut m = Merger::new();
        m.apply_layer(LayerIndex(0), vec![file(&format!("{deep}/f"), 1)]).unwrap();
        m.apply_layer(LayerIndex(1), vec![file(".wh.d", 0)]).unwrap();
        assert_eq!(m.len(), 1);
        drop(specs);
    });
}

#[test]
fn wide_directories() {
    small_stack(|| {
        let names: Vec<String> = (0..100_000).map(|i| format!("w/f{i:06}")).collect();
        let mut m = Merger::new();
        m.apply_layer(LayerIndex(0), names.iter().enumerate().map(|(i, n)| file(n, i as u64))).unwrap();
        assert_eq!(m.len(), 100_002);
        let specs = m.finish();
        let Content::Dir(children) = &specs[1].content else { panic!("w is not a directory") };
        assert_eq!(children.len(), 100_000);
        assert!(children.windows(2).all(|w| w[0].0 < w[1].0), "children sorted by name");
        assert_eq!(children[5].1, Ino::from_index(2 + 5), "breadth-first numbering");
        let mut m = Merger::new();
        m.apply_layer(LayerIndex(0), names.iter().map(|n| file(n, 0))).unwrap();
        m.apply_layer(LayerIndex(1), vec![file("w/.wh..wh..opq", 0), file("w/new", 1)]).unwrap();
        assert_eq!(m.len(), 3);
    });
}

fn busy_layers() -> Vec<Vec<TarEntry>> {
    vec![
        vec![dir("etc"), file("etc/b", 1), file("etc/a", 2), hardlink("etc/c", "etc/a"), symlink("z", "etc")],
        vec![file("etc/.wh.b", 0), dir("var"), file("var/log", 3), hardlink("var/h", "etc/c"), dir("")],
        vec![file("z/new", 4), file("var/.wh..wh..opq", 0), file("var/keep", 5)],
    ]
}

#[test]
fn deterministic_output() {
    let run = || {
        let mut m = Merger::new();
        for (i, layer) in busy_layers().into_iter().enumerate() {
            m.apply_layer(LayerIndex::from_index(i), layer).unwrap();
        }
        m.finish()
    };
    let first = run();
    assert_eq!(first, run());
    let v = View::new(first);
    assert_eq!(v.all(), ["", "/etc", "/etc/a", "/etc/c", "/etc/new", "/var", "/var/keep", "/z"]);
    assert_eq!(v.nlink("/etc/a"), 2, "var/h went with the opaque var");
    // Every node is referenced; the layout is root, then breadth-first.
    assert_eq!(v.specs.len(), v.all().len() - 1);
    let Content::Dir(root) = &v.specs[0].content else { panic!() };
    let root_inos: Vec<Ino> = root.iter().map(|(_, i)| *i).collect();
    assert_eq!(root_inos, [Ino::from_index(1), Ino::from_index(2), Ino::from_index(3)]);
}
