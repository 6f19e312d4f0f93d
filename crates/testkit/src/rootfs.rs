//! A root filesystem directory on disk with every case of DESIGN.md's correctness reference, for testing
//! `clip archive` (which packs directories, not images): owners beyond 2^21, setuid/setgid/sticky bits,
//! char and block devices (minor beyond 255), a FIFO and a socket, `user.*`, `trusted.*` and
//! `security.capability` xattrs (on files, a directory and a symlink), a hard-link group of three across
//! directories, relative/absolute/dangling symlinks, mtimes with nanoseconds on every entry (symlinks
//! included), a 255-byte name, non-ASCII and non-UTF-8 names, an empty file, an empty directory, and a
//! large file of pseudo-random bytes.
//!
//! Needs root (devices, chown, trusted.* xattrs). Panics with the failing path, like the rest of the kit.
//!
//! ```no_run
//! let dir = tempfile::tempdir().unwrap();
//! clip_testkit::reference_rootfs(dir.path(), 9 << 20);
//! let tree = clip_testkit::snapshot(dir.path());
//! assert!(tree.contains("dev/null"));
//! ```

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::{capability_v2, pseudo_random_bytes, CAP_NET_RAW};

/// Path (relative to the root) of the large file [`reference_rootfs`] writes.
pub const ROOTFS_BIG_FILE: &str = "data/big.bin";
/// Paths of the hard-link group (one inode, three names).
pub const ROOTFS_HARD_LINKS: [&str; 3] = ["data/one", "data/two", "other/three"];

/// Fills the empty directory `root` with the reference tree; the large file has `big_len` bytes.
///
/// # Panics
/// When not run as root or when any step fails.
pub fn reference_rootfs(root: &Path, big_len: usize) {
    assert!(nix::unistd::geteuid().is_root(), "reference_rootfs needs root (devices, owners, trusted.* xattrs)");
    let p = |rel: &str| root.join(rel);
    for dir in ["etc", "usr/bin", "tmp", "home/user", "dev", "run", "data", "other", "lib", "long", "emptydir"] {
        std::fs::create_dir_all(p(dir)).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
    }
    write(&p("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n");
    write(&p("etc/empty"), b"");
    write(&p("usr/bin/ping"), b"\x7fELF ping");
    write(&p("usr/bin/su"), b"\x7fELF su");
    write(&p("usr/bin/wall"), b"\x7fELF wall");
    write(&p("home/user/notes"), b"my notes\n");
    write(&p(ROOTFS_BIG_FILE), &pseudo_random_bytes(0xb16, big_len));
    write(&p(ROOTFS_HARD_LINKS[0]), b"one inode, three names\n");
    for link in &ROOTFS_HARD_LINKS[1..] {
        std::fs::hard_link(p(ROOTFS_HARD_LINKS[0]), p(link)).unwrap_or_else(|e| panic!("link {link}: {e}"));
    }
    symlink("../usr/bin/ping", &p("lib/rel"));
    symlink("/etc/passwd", &p("lib/abs"));
    symlink("no/such/file", &p("lib/dangling"));
    node(&p("dev/null"), SFlag::S_IFCHR, 0o666, (1, 3));
    node(&p("dev/loop0"), SFlag::S_IFBLK, 0o660, (7, 0));
    node(&p("dev/wide"), SFlag::S_IFCHR, 0o600, (259, 300_000));
    node(&p("run/fifo"), SFlag::S_IFIFO, 0o620, (0, 0));
    node(&p("run/sock"), SFlag::S_IFSOCK, 0o755, (0, 0));
    write(&p(&format!("long/{}", "n".repeat(255))), b"long name\n");
    write(&root.join("名前").join("ファイル.txt"), "非ASCII\n".as_bytes());
    write(&root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n");

    // Owners first: chown clears setuid/setgid.
    chown(&p("home/user"), 3_000_000, 3_000_001);
    chown(&p("home/user/notes"), 3_000_000, 3_000_001);
    chown(&p("usr/bin/wall"), 0, 5);
    lchown(&p("lib/abs"), 1000, 1000);
    chmod(&p("usr/bin/su"), 0o4755);
    chmod(&p("usr/bin/wall"), 0o2755);
    chmod(&p("usr/bin/ping"), 0o755);
    chmod(&p("tmp"), 0o1777);
    chmod(&p("home/user"), 0o700);
    chmod(&p("home/user/notes"), 0o600);
    chmod(&p("emptydir"), 0o555);

    setxattr(&p("usr/bin/ping"), "security.capability", &capability_v2(1 << CAP_NET_RAW, 0, true));
    setxattr(&p("home/user/notes"), "user.comment", b"hello");
    setxattr(&p("home/user/notes"), "user.binary", &[0, 1, 2, 0xff]);
    setxattr(&p("home/user"), "user.dir", b"on a directory");
    setxattr(&p("lib/abs"), "trusted.link", b"on a symlink");
    setxattr(&p(ROOTFS_HARD_LINKS[0]), "user.shared", b"every name sees it");

    // mtimes last, deepest first (creating entries touched their directories), each one different.
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in all.iter().enumerate() {
        let t = TimeSpec::new(1_600_000_000 + i as i64 * 7_919, 123_456_789 - i as i64 * 1_001);
        utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
            .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())).path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn symlink(target: &str, path: &Path) {
    std::os::unix::fs::symlink(target, path).unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
}

fn node(path: &Path, kind: SFlag, perm: u32, (major, minor): (u64, u64)) {
    mknod(path, kind, Mode::from_bits_truncate(perm), nix::sys::stat::makedev(major, minor))
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
    // mknod applies the umask: set the permissions exactly.
    chmod(path, perm);
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}
