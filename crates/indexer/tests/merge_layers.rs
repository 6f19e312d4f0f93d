//! End to end through the public API: layer tars written by the `tar` crate, read by `TarReader`, merged by
//! `Merger`. The expected trees are what `umoci unpack` (0.4.7) produced for the same layers (mtimes of
//! directories umoci creates implicitly are left out: it stamps them with the current time).

use std::collections::{BTreeMap, HashMap};

use clip_format::{mode, Content, LayerIndex, NodeSpec};
use clip_indexer::merge::{Merger, OPAQUE_XATTR};
use clip_indexer::tar::TarReader;
use tar::{EntryType, Header};

/// A layer being written.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut h = Self::header(EntryType::Directory, mode);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Layer {
        self.file_as(path, data, 0o644, 0, &[])
    }

    fn file_as(mut self, path: &str, data: &[u8], mode: u32, uid: u64, pax: &[(&str, &[u8])]) -> Layer {
        if !pax.is_empty() {
            self.0.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        let mut h = Self::header(EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Layer {
        let mut h = Self::header(kind, 0o777);
        h.set_link_name_literal(target).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn symlink(self, path: &str, target: &str) -> Layer {
        self.link(EntryType::Symlink, path, target)
    }

    fn hardlink(self, path: &str, target: &str) -> Layer {
        self.link(EntryType::Link, path, target)
    }

    fn special(mut self, kind: EntryType, path: &str, mode: u32, dev: (u32, u32)) -> Layer {
        let mut h = Self::header(kind, mode);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A tree by path (`/` the root, `/a/b` below it): each node, the identity of its inode (tree, index), and the
/// link count the tree it comes from gives it (what a file system over that tree reports).
type Flat = BTreeMap<String, (NodeSpec, (usize, usize), usize)>;

/// How many directory entries name each inode of `specs`.
fn link_counts(specs: &[NodeSpec]) -> HashMap<usize, usize> {
    let mut nlink = HashMap::new();
    for spec in specs {
        if let Content::Dir(children) = &spec.content {
            for (_, ino) in children {
                *nlink.entry(ino.index()).or_default() += 1;
            }
        }
    }
    nlink
}

/// Merge the layers and describe the result one line per path, sorted: kind, mode, uid, nlink, contents.
/// Also checks the layer views: overlay over them shows exactly the merged tree.
fn merged(layers: &[Vec<u8>]) -> String {
    let mut merger = Merger::with_views();
    for (index, bytes) in layers.iter().enumerate() {
        let entries = TarReader::new(&bytes[..]).collect::<Result<Vec<_>, _>>().unwrap();
        merger.apply_layer(LayerIndex::from_index(index), entries).unwrap();
    }
    let (specs, views) = merger.finish_with_views();
    assert_eq!(views.len(), layers.len());
    let flat = flatten(&specs, 0);
    let (merged, seen) = (describe(&flat, layers, true), describe(&overlay(&views), layers, true));
    assert_eq!(seen, merged, "overlay over the layer views differs from the merge");
    describe(&flat, layers, false)
}

/// The tree `specs` by path.
fn flatten(specs: &[NodeSpec], tree: usize) -> Flat {
    let nlink = link_counts(specs);
    let mut flat = Flat::new();
    let mut stack = vec![("/".to_owned(), 0usize)];
    while let Some((path, index)) = stack.pop() {
        if let Content::Dir(children) = &specs[index].content {
            for (name, ino) in children {
                stack.push((child_path(&path, name), ino.index()));
            }
        }
        flat.insert(path, (specs[index].clone(), (tree, index), nlink.get(&index).copied().unwrap_or(1)));
    }
    flat
}

fn child_path(dir: &str, name: &[u8]) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), String::from_utf8_lossy(name))
}

/// What overlayfs shows over `views` (bottom first): a character device 0/0 hides the path below it, a
/// directory merges with a lower directory unless it is opaque, anything else hides what is below.
fn overlay(views: &[Vec<NodeSpec>]) -> Flat {
    let mut out = Flat::new();
    for (v, view) in views.iter().enumerate() {
        let nlink = link_counts(view);
        let mut stack = vec![("/".to_owned(), 0usize)];
        while let Some((path, index)) = stack.pop() {
            let mut spec = view[index].clone();
            let below = |p: &String| p.starts_with(&format!("{}/", path.trim_end_matches('/')));
            let whiteout = matches!(spec.content, Content::Device { major: 0, minor: 0 })
                && spec.mode & mode::S_IFMT == mode::S_IFCHR;
            let opaque = spec.xattrs.iter().any(|x| x.name == OPAQUE_XATTR && x.value == b"y");
            let lower_dir = out.get(&path).is_some_and(|(n, ..)| matches!(n.content, Content::Dir(_)));
            if whiteout || !matches!(spec.content, Content::Dir(_)) || opaque || !lower_dir {
                out.retain(|p, _| p != &path && !below(p));
            }
            if whiteout {
                continue;
            }
            if let Content::Dir(children) = &spec.content {
                for (name, ino) in children {
                    stack.push((child_path(&path, name), ino.index()));
                }
            }
            spec.xattrs.retain(|x| x.name != OPAQUE_XATTR);
            out.insert(path, (spec, (v, index), nlink.get(&index).copied().unwrap_or(1)));
        }
    }
    out
}

/// One line per path, sorted: kind and mode, uid, nlink and contents of files, xattr names; in `detail` also
/// gid, mtime and xattr values.
fn describe(flat: &Flat, layers: &[Vec<u8>], detail: bool) -> String {
    let mut group: HashMap<(usize, usize), usize> = HashMap::new();
    for (_, id, _) in flat.values() {
        *group.entry(*id).or_default() += 1;
    }
    let mut lines = Vec::new();
    for (path, (spec, id, nlink)) in flat {
        let what = match &spec.content {
            Content::Dir(_) => String::new(),
            Content::File(data) => {
                let bytes = &layers[data.layer.index()][data.offset as usize..][..data.size as usize];
                // What the file system reports, and how many names share the inode here: equal in a tree
                // that is right.
                let names = if group[id] == *nlink { String::new() } else { format!(" names={}", group[id]) };
                format!(" nlink={nlink}{names} {:?}", String::from_utf8_lossy(bytes))
            }
            Content::Symlink(target) => format!(" -> {}", String::from_utf8_lossy(target)),
            Content::Device { major, minor } => format!(" dev={major},{minor}"),
            Content::Special => String::new(),
        };
        let xattrs: Vec<String> = spec
            .xattrs
            .iter()
            .map(|x| match detail {
                true => format!("{}={:?}", String::from_utf8_lossy(&x.name), x.value),
                false => String::from_utf8_lossy(&x.name).into_owned(),
            })
            .collect();
        let more = if detail { format!(" gid={} t={:?}", spec.gid, spec.mtime) } else { String::new() };
        let line = format!("{path} {:o} uid={}{more}{what} {}", spec.mode, spec.uid, xattrs.join(","));
        lines.push(line.trim_end().to_owned());
    }
    lines.join("\n")
}

#[test]
fn whiteouts_opaque_dirs_hard_links_and_symlinked_parents() {
    let cap: &[u8] = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let l0 = Layer::new()
        .dir("etc", 0o755)
        .file_as("etc/a", b"aaa", 0o4755, 1000, &[("SCHILY.xattr.security.capability", cap), ("gid", b"2000000")])
        .file("etc/b", b"bbb")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .dir("d", 0o755)
        .dir("d/sub", 0o755)
        .file("d/sub/x", b"x")
        .file("d/keep", b"k")
        .dir("d/pass", 0o755)
        .file("d/pass/lower", b"l")
        .dir("d/pass/deep", 0o755)
        .file("d/pass/deep/lower", b"dl")
        .file("f1", b"f1")
        .dir("h", 0o755)
        .file_as("h/a", b"hhh", 0o600, 3, &[])
        .hardlink("h/b", "h/a")
        .hardlink("h/c", "h/a")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/usr/lib")
        .symlink("up", "../../usr")
        .symlink("dangling", "nonexistent/dir")
        .special(EntryType::Char, "null", 0o666, (1, 3))
        .special(EntryType::Fifo, "fifo", 0o600, (0, 0))
        .file("x", b"x0")
        .dir("sticky", 0o1777)
        .bytes();
    let l1 = Layer::new()
        .file("d/.wh..wh..opq", b"")
        .dir("d/sub", 0o700)
        .file("d/sub/z", b"z")
        .file("d/pass/deep/new", b"n")
        .file("lib/a", b"la")
        .file("abs/b", b"ab")
        .file("up/c", b"uc")
        .file("dangling/d", b"dd")
        .file("h/b", b"new b")
        .file(".wh.f1", b"")
        .dir("x", 0o755)
        .file("x/y", b"xy")
        .file("imp/a/b/file", b"imp")
        .file("newf", b"nf")
        .file(".wh.newf", b"")
        .bytes();
    let l2 = Layer::new()
        .file("x", b"x2")
        .hardlink("hl2", "etc/a")
        .file("h/.wh.a", b"")
        .dir("opq", 0o755)
        .file("opq/f", b"o")
        .file("opq/.wh..wh..opq", b"")
        .dir(".", 0o750)
        .bytes();
    let expected = r#"
/ 40750 uid=0
/abs 120777 uid=0 -> /usr/lib
/d 40755 uid=0
/d/pass 40755 uid=0
/d/pass/deep 40755 uid=0
/d/pass/deep/new 100644 uid=0 nlink=1 "n"
/d/sub 40700 uid=0
/d/sub/z 100644 uid=0 nlink=1 "z"
/dangling 120777 uid=0 -> nonexistent/dir
/etc 40755 uid=0
/etc/a 104755 uid=1000 nlink=2 "aaa" security.capability
/etc/b 100644 uid=0 nlink=1 "bbb"
/fifo 10600 uid=0
/h 40755 uid=0
/h/b 100644 uid=0 nlink=1 "new b"
/h/c 100600 uid=3 nlink=1 "hhh"
/hl2 104755 uid=1000 nlink=2 "aaa" security.capability
/imp 40755 uid=0
/imp/a 40755 uid=0
/imp/a/b 40755 uid=0
/imp/a/b/file 100644 uid=0 nlink=1 "imp"
/lib 120777 uid=0 -> usr/lib
/newf 100644 uid=0 nlink=1 "nf"
/nonexistent 40755 uid=0
/nonexistent/dir 40755 uid=0
/nonexistent/dir/d 100644 uid=0 nlink=1 "dd"
/null 20666 uid=0 dev=1,3
/opq 40755 uid=0
/opq/f 100644 uid=0 nlink=1 "o"
/sticky 41777 uid=0
/up 120777 uid=0 -> ../../usr
/usr 40755 uid=0
/usr/c 100644 uid=0 nlink=1 "uc"
/usr/lib 40755 uid=0
/usr/lib/a 100644 uid=0 nlink=1 "la"
/usr/lib/b 100644 uid=0 nlink=1 "ab"
/x 100644 uid=0 nlink=1 "x2""#;
    assert_eq!(merged(&[l0, l1, l2]), expected.trim_start());
}

#[test]
fn same_layer_orderings() {
    let l0 = Layer::new()
        .dir("a", 0o755)
        .file("a/lower", b"l")
        .dir("a/sub", 0o755)
        .file("a/sub/deep", b"d")
        .file("t", b"old")
        .dir("real", 0o755)
        .file("real/x", b"x")
        .symlink("l", "real")
        .dir("w", 0o755)
        .file("w/keep", b"k")
        .file("w/gone", b"g")
        .file("q", b"q")
        .bytes();
    let l1 = Layer::new()
        .dir("a", 0o700)
        .file("a/upper", b"u")
        .file(".wh.a", b"")
        .hardlink("hl", "t")
        .file("t", b"new!")
        .file("l/.wh.x", b"")
        .file("w/gone", b"G")
        .file("w/.wh.gone", b"")
        .file("w/.wh.keep", b"")
        .dir("q", 0o755)
        .file("q/r", b"r")
        .symlink("q", "w")
        .bytes();
    let l2 = Layer::new().file("l/made", b"m").file("q/.wh..wh..opq", b"").file("q/z", b"z").bytes();
    let expected = r#"
/ 40755 uid=0
/a 40700 uid=0
/a/upper 100644 uid=0 nlink=1 "u"
/hl 100644 uid=0 nlink=1 "old"
/l 120777 uid=0 -> real
/q 120777 uid=0 -> w
/real 40755 uid=0
/real/made 100644 uid=0 nlink=1 "m"
/t 100644 uid=0 nlink=1 "new!"
/w 40755 uid=0
/w/z 100644 uid=0 nlink=1 "z""#;
    assert_eq!(merged(&[l0, l1, l2]), expected.trim_start());
}

#[test]
fn layer_views_hide_what_a_layer_removed_without_a_marker() {
    let l0 = Layer::new()
        .dir("x", 0o755)
        .file("x/a", b"a")
        .dir("x/sub", 0o750)
        .file("x/sub/deep", b"d")
        .file("y", b"y")
        .dir("g", 0o755)
        .file("g/h1", b"h")
        .hardlink("g/h2", "g/h1")
        .dir("w", 0o755)
        .file("w/k", b"k")
        .bytes();
    // A directory replaced by a file and made a directory again; a whiteout of a directory re-created in the
    // same layer; a hard link to a lower file that has two names already; a whiteout where nothing is.
    let l1 = Layer::new()
        .dir("x", 0o700)
        .file("x", b"file now")
        .dir("x", 0o711)
        .file("x/new", b"n")
        .file("w/.wh..wh..opq", b"")
        .file(".wh.w", b"")
        .dir("w", 0o755)
        .file("w/n", b"n")
        .hardlink("g/h3", "g/h1")
        .file("z/.wh.q", b"")
        .bytes();
    let l2 = Layer::new().file(".wh.y", b"").file("y2", b"y2").bytes();
    let tree = merged(&[l0, l1, l2]);
    let paths: Vec<&str> = tree.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(paths, ["/", "/g", "/g/h1", "/g/h2", "/g/h3", "/w", "/w/n", "/x", "/x/new", "/y2"], "{tree}");
    assert!(tree.contains("/g/h3 100644 uid=0 nlink=3"), "{tree}");
}
