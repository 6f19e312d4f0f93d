//! Comparing two [`Tree`] snapshots field by field, with one readable line per difference:
//! `PATH: FIELD EXPECTED != ACTUAL`, e.g. `usr/bin/x: mode 0100755 != 0104755`.
//!
//! ```no_run
//! use clip_testkit::{compare, snapshot, CompareOpts};
//! use std::path::Path;
//! let expected = snapshot(Path::new("/tmp/umoci-rootfs"));
//! let actual = snapshot(Path::new("/mnt/clip"));
//! let diffs = compare(&expected, &actual, CompareOpts::default());
//! assert!(diffs.is_empty(), "{}", diffs.join("\n"));
//! ```

use std::borrow::Borrow;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::tree::{show_bytes, show_path, snapshot, FileKind, Node, Tree};

/// What [`compare`] leaves out. `Default` compares everything except the root directory's mtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareOpts {
    /// Paths (relative, as in [`Tree`]) whose mtime is not compared, e.g. implicit parent directories that
    /// umoci creates with the current time.
    pub ignore_mtime: Vec<PathBuf>,
    /// Do not compare the root directory's mtime (default `true`).
    pub ignore_root_mtime: bool,
    /// Do not compare symlinks' mtimes (default `false`).
    pub ignore_symlink_mtime: bool,
    /// Do not compare directories' `st_nlink` (default `false`; a FUSE filesystem may report its own).
    pub ignore_dir_nlink: bool,
    /// Xattr names not compared (e.g. `security.selinux`).
    pub ignore_xattrs: Vec<OsString>,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts {
            ignore_mtime: Vec::new(),
            ignore_root_mtime: true,
            ignore_symlink_mtime: false,
            ignore_dir_nlink: false,
            ignore_xattrs: Vec::new(),
        }
    }
}

impl CompareOpts {
    /// Adds paths whose mtime is not compared.
    pub fn ignoring_mtime_of<P: AsRef<Path>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.ignore_mtime.extend(paths.into_iter().map(|p| p.as_ref().to_path_buf()));
        self
    }

    /// The options for trees built from [`crate::conformance_layers`]: the mtimes of the implicit parent
    /// directories (created by umoci with the current time) are not compared.
    pub fn conformance() -> Self {
        CompareOpts::default().ignoring_mtime_of(crate::conformance::IMPLICIT_DIRS)
    }
}

/// Compares `actual` with `expected` and returns one line per difference (empty = equal). Each line names
/// the path and the field: `PATH: FIELD EXPECTED != ACTUAL`; paths only in one tree are reported as
/// `PATH: missing (expected KIND)` or `PATH: unexpected KIND`. Hard links are compared as groups of paths
/// (not inode numbers).
pub fn compare(expected: &Tree, actual: &Tree, opts: impl Borrow<CompareOpts>) -> Vec<String> {
    let opts = opts.borrow();
    let mut out = Vec::new();
    for (path, e) in &expected.nodes {
        match actual.nodes.get(path) {
            None => out.push(format!("{}: missing (expected {})", show_path(path), e.kind.name())),
            Some(a) => compare_node(path, e, a, opts, &mut out),
        }
    }
    for (path, a) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            out.push(format!("{}: unexpected {}", show_path(path), a.kind.name()));
        }
    }
    out
}

/// Panics with every difference (one per line, at most 200) when `actual` differs from `expected`.
pub fn assert_trees_equal(expected: &Tree, actual: &Tree, opts: impl Borrow<CompareOpts>) {
    let diffs = compare(expected, actual, opts);
    if !diffs.is_empty() {
        panic!("{}", report(&diffs));
    }
}

/// Unpacks `tag` of the OCI layout with umoci and asserts the tree at `actual_root` equals its rootfs.
///
/// # Panics
/// On any difference (listed), or when umoci fails.
pub fn assert_matches_umoci(layout_dir: &Path, tag: &str, actual_root: &Path, opts: impl Borrow<CompareOpts>) {
    let unpacked = crate::umoci::umoci_unpack(layout_dir, tag);
    let expected = snapshot(&unpacked.rootfs());
    let actual = snapshot(actual_root);
    let diffs = compare(&expected, &actual, opts);
    if !diffs.is_empty() {
        panic!(
            "{} differs from umoci unpack of {}:{tag}:\n{}",
            actual_root.display(),
            layout_dir.display(),
            report(&diffs)
        );
    }
}

fn report(diffs: &[String]) -> String {
    const MAX: usize = 200;
    let mut s = format!("{} difference(s) (expected != actual):\n", diffs.len());
    for d in diffs.iter().take(MAX) {
        s.push_str("  ");
        s.push_str(d);
        s.push('\n');
    }
    if diffs.len() > MAX {
        s.push_str(&format!("  ... and {} more\n", diffs.len() - MAX));
    }
    s
}

fn compare_node(path: &Path, e: &Node, a: &Node, opts: &CompareOpts, out: &mut Vec<String>) {
    let p = show_path(path);
    if e.kind != a.kind {
        out.push(format!("{p}: type {} != {}", e.kind.name(), a.kind.name()));
        return;
    }
    let mut field = |name: &str, ev: String, av: String| {
        if ev != av {
            out.push(format!("{p}: {name} {ev} != {av}"));
        }
    };
    field("mode", format!("0{:o}", e.mode), format!("0{:o}", a.mode));
    field("uid", e.uid.to_string(), a.uid.to_string());
    field("gid", e.gid.to_string(), a.gid.to_string());
    field("size", opt(e.size), opt(a.size));
    field("sha256", hash(e.sha256), hash(a.sha256));
    let is_root = path == Path::new(".");
    let skip_mtime = (is_root && opts.ignore_root_mtime)
        || (e.kind == FileKind::Symlink && opts.ignore_symlink_mtime)
        || opts.ignore_mtime.iter().any(|i| i == path);
    if !skip_mtime {
        field("mtime", mtime(e), mtime(a));
    }
    field("rdev", rdev(e), rdev(a));
    if !(e.kind == FileKind::Dir && opts.ignore_dir_nlink) {
        field("nlink", e.nlink.to_string(), a.nlink.to_string());
    }
    field("symlink target", target(e), target(a));
    let names = e.xattrs.keys().chain(a.xattrs.keys()).filter(|n| !opts.ignore_xattrs.contains(n));
    let mut names: Vec<&OsString> = names.collect();
    names.sort();
    names.dedup();
    for name in names {
        let show = |v: Option<&Vec<u8>>| v.map_or_else(|| "(absent)".to_owned(), |v| xattr_value(v));
        let (ev, av) = (show(e.xattrs.get(name)), show(a.xattrs.get(name)));
        field(&format!("xattr {}", name.to_string_lossy()), ev, av);
    }
    field("hard links", links(&e.hardlinks), links(&a.hardlinks));
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn hash(h: Option<[u8; 32]>) -> String {
    h.map_or_else(|| "-".to_owned(), hex::encode)
}

fn mtime(n: &Node) -> String {
    format!("{}.{:09}", n.mtime_sec, n.mtime_nsec)
}

fn rdev(n: &Node) -> String {
    format!("{}:{}", n.rdev_major(), n.rdev_minor())
}

fn target(n: &Node) -> String {
    n.symlink_target.as_deref().map_or_else(|| "-".to_owned(), |t| format!("\"{}\"", show_bytes(t)))
}

fn links(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| show_path(p)).collect();
    format!("[{}]", names.join(", "))
}

/// Printable UTF-8 values quoted, anything else as hex.
fn xattr_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(v)),
    }
}
