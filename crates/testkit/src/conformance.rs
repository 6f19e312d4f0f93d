//! The conformance image: four layers holding every case of DESIGN.md's "Correctness reference", so that
//! one image proves a merged tree equal to `umoci unpack`'s.
//!
//! Every case is commented where its entries are written; the test `tests/conformance.rs` asserts what
//! umoci makes of each. Every directory gets an explicit entry before its children (and later layers
//! re-declare the directories they write into, as `docker build` does), except where a case is about
//! implicit parents. Defaults: directories 0755, files 0644, owner 0:0, mtime [`crate::DEFAULT_MTIME`].

use crate::compress::Compression;
use crate::layer::{capability_v2, BigNumbers, Entry, LayerBuilder, LongNames, CAP_NET_BIND_SERVICE};
use crate::oci::{Image, ImageConfig, Layer};

/// uid written with PAX `uid` records (does not fit 7 octal digits).
pub const BIG_UID: u64 = 3_000_000;
/// gid written with PAX `gid` records.
pub const BIG_GID: u64 = 4_000_000;
/// uid written as a GNU base-256 field (2^24 + 5).
pub const BASE256_UID: u64 = (1 << 24) + 5;
/// gid written as a GNU base-256 field: 2^21, the first value that does not fit 7 octal digits.
pub const BASE256_GID: u64 = 1 << 21;
/// The largest uid/gid that fits the octal field (2^21 - 1).
pub const OCTAL_MAX_ID: u64 = (1 << 21) - 1;
/// An mtime with nanoseconds (PAX `mtime=1600000000.123456789`).
pub const NS_MTIME: (u64, u32) = (1_600_000_000, 123_456_789);
/// An mtime beyond 2^32 seconds (year 2128) with nanoseconds.
pub const FAR_MTIME: (u64, u32) = (5_000_000_000, 999_999_999);

/// Implicit parent directories: never declared in any layer, created by the unpacker (umoci gives them
/// the current time as mtime, so compare them with [`crate::CompareOpts::conformance`]).
pub const IMPLICIT_DIRS: &[&str] = &["implicit", "implicit/a", "implicit/a/b"];

/// A 150-byte file name under `long/`, written with a PAX `path` record.
pub fn long_pax_name() -> String {
    format!("long/{}", "p".repeat(150))
}

/// A 200-byte file name under `long/`, written with a GNU `L` entry.
pub fn long_gnu_name() -> String {
    format!("long/{}", "g".repeat(200))
}

/// A 156-byte path split into the ustar prefix (`long/ddd…`, 65 bytes) and name (90 bytes).
pub fn long_prefix_name() -> String {
    format!("{}/{}", long_prefix_dir(), "f".repeat(90))
}

fn long_prefix_dir() -> String {
    format!("long/{}", "d".repeat(60))
}

/// A 125-byte hard-link name under `long/` (GNU `L`), linking to [`long_gnu_name`] (GNU `K`).
pub fn long_hardlink_name() -> String {
    format!("long/{}", "h".repeat(120))
}

/// The uncompressed tars of the conformance image, lowest layer first.
pub fn conformance_layers() -> Vec<Vec<u8>> {
    vec![layer1(), layer2(), layer3(), layer4()]
}

/// The conformance image with every layer compressed the same way, and a config using every field.
pub fn conformance_image(compression: Compression) -> Image {
    conformance_image_mixed(&[compression; 4])
}

/// The conformance image with layer `i` compressed as `compressions[i % len]`.
///
/// # Panics
/// When `compressions` is empty.
pub fn conformance_image_mixed(compressions: &[Compression]) -> Image {
    assert!(!compressions.is_empty(), "conformance_image_mixed needs at least one compression");
    let layers = conformance_layers()
        .into_iter()
        .enumerate()
        .map(|(i, tar)| Layer::new(tar, compressions[i % compressions.len()]))
        .collect();
    Image { config: conformance_config(), layers }
}

/// An image config with every field tests check (Env, Cmd, Entrypoint, WorkingDir, User, Labels,
/// ExposedPorts, Volumes, StopSignal).
pub fn conformance_config() -> ImageConfig {
    ImageConfig {
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "LANG=C.UTF-8".into(),
            "CLIP_TEST=conformance".into(),
        ],
        cmd: Some(vec!["--serve".into(), "--port=8080".into()]),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        working_dir: Some("/etc".into()),
        user: Some("1000:1000".into()),
        labels: [("org.example.case".to_owned(), "conformance".to_owned())].into(),
        exposed_ports: vec!["8080/tcp".into(), "53/udp".into()],
        volumes: vec!["/data".into()],
        stop_signal: Some("SIGTERM".into()),
        ..ImageConfig::default()
    }
}

/// Layer 1, the base: one of everything.
fn layer1() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    // Whiteouts and replacement: files and a directory that layer 2 whites out or replaces.
    l.dir("etc")
        .file("etc/hostname", "base\n") // replaced (new contents and mode) in layer 2
        .file("etc/removed", "whited out in layer 2\n")
        .dir("etc/removed-dir") // whited out as a whole in layer 2, with its child
        .file("etc/removed-dir/inner", "gone with its directory\n")
        .file("etc/wh-then-add", "layer 1\n") // layer 2: whiteout, then a new file of the same name
        .file("etc/add-then-wh", "layer 1\n"); // layer 2: a new file, then its whiteout (which must not hide it)

    // Opaque directory: these lower entries are hidden by layer 2's `.wh..wh..opq`.
    l.dir("opaque")
        .file("opaque/lower-file", "layer 1, hidden by the opaque marker\n")
        .dir("opaque/lower-dir")
        .file("opaque/lower-dir/x", "hidden\n");

    // File replaced by a directory (layer 2) and back to a file (layer 3); directory replaced by a file
    // (layer 2) and back to a directory (layer 3).
    l.dir("replace")
        .file("replace/file-then-dir", "a file in layer 1\n")
        .dir("replace/dir-then-file")
        .file("replace/dir-then-file/child", "removed when the directory becomes a file\n");

    // Hard links: a group of three names, one of them in a subdirectory; a group whose `g2` is overwritten
    // in layer 2; a group whose `w2` is whited out in layer 4; a file that layer 2 hard-links to.
    let hl = |e: Entry| e.mode(0o640).owner(1000, 1000);
    l.dir("links")
        .dir("links/sub")
        .entry(hl(Entry::file("links/a", "hard link group of three\n")))
        .entry(hl(Entry::hardlink("links/b", "links/a")))
        .entry(hl(Entry::hardlink("links/sub/c", "links/a")))
        .file("links/g1", "group whose g2 is overwritten\n")
        .hardlink("links/g2", "links/g1")
        .hardlink("links/g3", "links/g1")
        .file("links/w1", "group whose w2 is whited out\n")
        .hardlink("links/w2", "links/w1")
        .file("links/lower-target", "hard-linked from layer 2\n");

    // Symlinks: relative, absolute, dangling, to a directory (whited out in layer 4), and with a symlink
    // mode that is not 0777 in the header (symlink permissions are always 0777 on Linux).
    l.dir("sym")
        .symlink("sym/rel", "../etc/hostname")
        .symlink("sym/abs", "/etc/hostname")
        .symlink("sym/dangling", "does/not/exist")
        .symlink("sym/dir", "../links")
        .entry(Entry::symlink("sym/odd-mode", "rel").mode(0o755));

    // Devices and FIFOs, including a minor number above 255 and a major above 255 (split encodings).
    l.dir("dev")
        .entry(Entry::char_device("dev/null", 1, 3).mode(0o666))
        .entry(Entry::block_device("dev/loop0", 7, 0).mode(0o660).owner(0, 6))
        .entry(Entry::char_device("dev/big", 511, 70_000).mode(0o600))
        .entry(Entry::fifo("dev/fifo").mode(0o620));

    // setuid / setgid / sticky, all bits, no bits, and a mode field carrying file-type bits (0o100644, as
    // older Go writers produce) whose type bits must be ignored.
    l.dir("perm")
        .entry(Entry::file("perm/setuid", "#!/bin/sh\n").mode(0o4755))
        .entry(Entry::file("perm/setgid", "#!/bin/sh\n").mode(0o2755))
        .entry(Entry::dir("perm/sticky").mode(0o1777))
        .entry(Entry::dir("perm/setgid-dir").mode(0o2775).owner(0, 50))
        .entry(Entry::file("perm/all-bits", "").mode(0o7777))
        .entry(Entry::file("perm/none", "no permissions\n").mode(0))
        .entry(Entry::file("perm/type-bits-in-mode", "mode field 0100644\n").mode(0o100644));

    // uid/gid beyond 2^21: PAX records, GNU base-256 fields, the octal maximum, on a directory and (lchown)
    // on a symlink; setuid after chown must survive (the kernel clears it on chown).
    l.dir("owners")
        .entry(Entry::file("owners/pax", "pax uid/gid\n").owner(BIG_UID, BIG_GID))
        .entry(
            Entry::file("owners/base256", "base-256 uid/gid\n")
                .owner(BASE256_UID, BASE256_GID)
                .big_numbers(BigNumbers::Base256),
        )
        .entry(Entry::file("owners/octal-max", "").owner(OCTAL_MAX_ID, OCTAL_MAX_ID))
        .entry(Entry::file("owners/setuid-big", "").owner(BIG_UID, BIG_GID).mode(0o4750))
        .entry(Entry::dir("owners/big-dir").owner(BIG_UID, BIG_GID))
        .entry(Entry::symlink("owners/big-link", "pax").owner(BIG_UID, BIG_GID));

    // mtimes: nanoseconds, the epoch, beyond 2^32 seconds, on a symlink, and on a directory whose mtime
    // must survive its children being written after it.
    l.entry(Entry::dir("times").mtime(1_650_000_000, 987_654_321))
        .entry(Entry::file("times/ns", "").mtime(NS_MTIME.0, NS_MTIME.1))
        .entry(Entry::file("times/epoch", "").mtime(0, 0))
        .entry(Entry::file("times/far", "").mtime(FAR_MTIME.0, FAR_MTIME.1))
        .entry(Entry::symlink("times/link", "ns").mtime(1_500_000_000, 42));

    // xattrs (PAX SCHILY.xattr.*): user.* with text and binary values, security.capability with a valid v2
    // capability blob (cap_net_bind_service=ep), and an xattr on a directory.
    l.dir("xattr")
        .entry(Entry::file("xattr/user", "").xattr("user.greeting", "hello").xattr("user.binary", [0u8, 1, 2, 0xff]))
        .entry(
            Entry::file("xattr/cap", "#!/bin/sh\n")
                .mode(0o755)
                .xattr("security.capability", capability_v2(1 << CAP_NET_BIND_SERVICE, 0, true)),
        )
        .entry(Entry::dir("xattr/dir").xattr("user.on-dir", "yes"));

    // Long names: > 100 bytes via PAX `path`, GNU `L`, the ustar prefix field; long symlink targets via
    // PAX `linkpath` and GNU `K`; a hard link with both a long name and a long target (GNU `L` + `K`).
    let long_target = format!("{}/../{}", "x".repeat(60), "p".repeat(150));
    l.dir("long")
        .file(long_pax_name(), "long name via PAX path\n")
        .entry(Entry::file(long_gnu_name(), "long name via GNU LongLink\n").long_names(LongNames::Gnu))
        .dir(long_prefix_dir())
        .entry(Entry::file(long_prefix_name(), "long name via ustar prefix\n").long_names(LongNames::UstarPrefix))
        .symlink("long/link-pax", long_target.clone())
        .entry(Entry::symlink("long/link-gnu", long_target).long_names(LongNames::Gnu))
        .entry(Entry::hardlink(long_hardlink_name(), long_gnu_name()).long_names(LongNames::Gnu));

    // Non-ASCII names: UTF-8 in file and directory names, a space, and one Latin-1 byte (not UTF-8: names
    // are bytes, not strings).
    l.dir("unicode")
        .file("unicode/日本語.txt", "japanese\n")
        .file("unicode/café", "accent\n")
        .file("unicode/with space", "space\n")
        .dir("unicode/Ünïcödé")
        .file("unicode/Ünïcödé/emoji-🦀", "crab\n")
        .file(b"unicode/latin1-caf\xe9".to_vec(), "not UTF-8\n");

    // Implicit parent directories: no entries for `implicit`, `implicit/a`, `implicit/a/b` (IMPLICIT_DIRS).
    l.file("implicit/a/b/file", "parents never declared\n");

    // An empty file.
    l.file("empty", "");

    // A directory whose mode and owner change when layer 2 re-declares it; its child stays.
    l.dir("redeclared").file("redeclared/keep", "survives the re-declaration\n");

    // A directory whose lower contents layer 4 hides with an opaque marker alone.
    l.dir("wipe").file("wipe/a", "hidden by layer 4\n").dir("wipe/sub").file("wipe/sub/b", "hidden\n");
    l.finish()
}

/// Layer 2: whiteouts, the opaque directory, replacements, hard links onto lower files, a re-declared
/// directory.
fn layer2() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("etc")
        // A lower file replaced: new contents and mode.
        .entry(Entry::file("etc/hostname", "upper\n").mode(0o600))
        // Whiteouts of a file and of a directory with contents.
        .whiteout("etc/removed")
        .whiteout("etc/removed-dir")
        // Whiteout then re-add in one layer: the new file is present.
        .whiteout("etc/wh-then-add")
        .file("etc/wh-then-add", "layer 2\n")
        // Add then whiteout in one layer: a whiteout hides lower layers only, so the new file stays.
        .file("etc/add-then-wh", "layer 2\n")
        .whiteout("etc/add-then-wh")
        // A whiteout of something that never existed is a no-op.
        .whiteout("etc/never-existed");

    // Opaque directory: entries of this layer before the marker (one re-using a lower name) and after it
    // survive; lower entries (`lower-dir`, layer 1's `lower-file`) are hidden.
    l.dir("opaque")
        .file("opaque/before-marker", "layer 2, before the marker\n")
        .file("opaque/lower-file", "layer 2, re-added before the marker\n")
        .opaque("opaque")
        .file("opaque/after-marker", "layer 2, after the marker\n")
        .dir("opaque/new-dir")
        .file("opaque/new-dir/y", "layer 2\n");

    // File → directory, directory → file.
    l.dir("replace")
        .dir("replace/file-then-dir")
        .file("replace/file-then-dir/child", "inside the directory that replaced a file\n")
        .file("replace/dir-then-file", "a file in layer 2\n");

    // Hard links: overwrite one name of a group (the others keep the old inode, nlink 2); link to a file of
    // a lower layer (nlink 2).
    l.dir("links").file("links/g2", "g2 overwritten in layer 2\n").hardlink("links/upper-link", "links/lower-target");

    // Directory re-declared with another mode, owner and mtime.
    l.entry(Entry::dir("redeclared").mode(0o700).owner(1234, 5678).mtime(1_650_000_000, 0));
    l.finish()
}

/// Layer 3: replacements reverted, a new file in a directory this layer does not declare.
fn layer3() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("replace")
        .file("replace/file-then-dir", "a file again in layer 3\n")
        .dir("replace/dir-then-file")
        .file("replace/dir-then-file/again", "a directory again in layer 3\n");
    // Implicit parent that exists in a lower layer: `etc` keeps its metadata.
    l.file("etc/only-in-3", "parent declared only in layer 1\n");
    l.finish()
}

/// Layer 4: a layer of deletions only: whiteout of a hard-link name and of a symlink, and an opaque
/// marker without its directory's entry.
fn layer4() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("links").whiteout("links/w2");
    l.dir("sym").whiteout("sym/dir");
    // `wipe` keeps its layer-1 metadata but loses all its contents.
    l.opaque("wipe");
    l.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::DEFAULT_MTIME;

    #[test]
    fn layers_are_deterministic_and_block_aligned() {
        let a = conformance_layers();
        let b = conformance_layers();
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        for t in &a {
            assert_eq!(t.len() % 512, 0);
            assert!(t.ends_with(&[0u8; 1024]));
        }
        assert_eq!(DEFAULT_MTIME, 1_700_000_000);
    }

    #[test]
    fn long_names_are_long() {
        assert!(long_pax_name().len() > 100);
        assert!(long_gnu_name().len() > 100);
        assert!(long_prefix_name().len() > 100);
        assert!(long_hardlink_name().len() > 100);
    }
}
