//! Real FUSE mounts of an index built in code, checked with std::fs, libc and the xattr crate. These tests
//! need root and /dev/fuse and fail (not skip) without them.

mod support;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clip_format::{mode, Archive, Content, DataRef, Ino, Timestamp, Xattr};
use clip_fs::{mount, ClipFs, FsError, MountOptions, Op, PassthroughSource};
use support::*;

const BIG_LEN: usize = 300_000;
const NS_MTIME: Timestamp = Timestamp { sec: 1_700_000_000, nsec: 123_456_789 };
/// A valid v2 `security.capability` (cap_net_bind_service+ep), as `setcap` writes it.
const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const UNICODE: &str = "ünïcødé-名前.txt";

fn long_name() -> String {
    "L".repeat(255)
}

/// The test image. Returns the index, the layer and where each file's bytes are.
fn image() -> (Arc<Archive>, bytes::Bytes, std::collections::HashMap<String, DataRef>) {
    let mut t = TreeBuilder::new();
    let root = Ino::ROOT;
    t.file(root, "big", &pattern(1, BIG_LEN), |n| n.mtime = NS_MTIME);
    t.file(root, "setuid", b"#!/bin/sh\necho hi\n", |n| {
        n.mode = mode::S_IFREG | 0o4755;
        n.uid = 3_000_000;
        n.gid = 4_000_000;
        n.xattrs = vec![
            Xattr { name: b"user.comment".to_vec(), value: b"hello".to_vec() },
            Xattr { name: b"security.capability".to_vec(), value: CAPABILITY.to_vec() },
        ];
    });
    let hard = t.file(root, "hardlink", &pattern(3, 5000), |_| {});
    let dir = t.dir(root, "dir", 0o750);
    t.link(dir, "hardlink2", hard);
    t.file(dir, "nested.txt", b"nested\n", |n| {
        n.uid = 1000;
        n.gid = 1000;
    });
    t.add(root, "symlink", spec(mode::S_IFLNK | 0o777, Content::Symlink(b"dir/nested.txt".to_vec())));
    t.add(root, "dangling", spec(mode::S_IFLNK | 0o777, Content::Symlink(b"/nonexistent/target".to_vec())));
    t.add(root, "chardev", spec(mode::S_IFCHR | 0o600, Content::Device { major: 4, minor: 64 }));
    t.add(root, "blockdev", spec(mode::S_IFBLK | 0o660, Content::Device { major: 259, minor: 65537 }));
    t.add(root, "fifo", spec(mode::S_IFIFO | 0o644, Content::Special));
    t.file(root, "empty", b"", |_| {});
    t.file(root, "slow", &pattern(4, 10_000), |_| {});
    t.file(root, "corrupt", &pattern(5, 20_000), |_| {});
    t.file(root, "secret", b"top secret\n", |n| n.mode = mode::S_IFREG | 0o600);
    t.file(root, UNICODE, "grüße\n".as_bytes(), |_| {});
    t.file(root, &long_name(), b"long\n", |_| {});
    let files = t.files.clone();
    let (archive, layer) = t.finish();
    (archive, layer, files)
}

fn mount_default() -> (Mounted, std::collections::HashMap<String, DataRef>) {
    let (archive, layer, files) = image();
    (Mounted::new(archive, TestBlobs::new(layer), MountSpec::default()), files)
}

/// A mount where the kernel leaves permission checks and write refusals to the filesystem.
fn mount_permissive() -> Mounted {
    let (archive, layer, _) = image();
    let options = MountOptions { read_only: false, default_permissions: false, ..MountOptions::default() };
    Mounted::new(archive, TestBlobs::new(layer), MountSpec { options, passthrough: None })
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("not an OS error: {e}"))
}

#[test]
fn listing_attributes_links_and_xattrs() {
    let (m, _) = mount_default();
    let names: BTreeSet<String> =
        fs::read_dir(m.root()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut expected: BTreeSet<String> = [
        "big", "setuid", "hardlink", "dir", "symlink", "dangling", "chardev", "blockdev", "fifo", "empty", "slow",
        "corrupt", "secret", UNICODE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.insert(long_name());
    assert_eq!(names, expected);
    let ls = std::process::Command::new("ls").arg("-a").arg(m.root()).output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.lines().any(|l| l == ".") && ls.lines().any(|l| l == ".."), "ls -a lists . and ..: {ls}");
    assert_eq!(ls.lines().count(), expected.len() + 2);
    let nested: BTreeSet<String> =
        fs::read_dir(m.path("dir")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(nested, ["hardlink2", "nested.txt"].iter().map(|s| s.to_string()).collect());

    // Root is inode 1; directories report 4096 bytes and 2 + subdirectories links.
    let root = fs::metadata(m.root()).unwrap();
    assert_eq!((root.ino(), root.size(), root.nlink()), (1, 4096, 3));
    let dir = fs::metadata(m.path("dir")).unwrap();
    assert_eq!((dir.mode(), dir.nlink()), (mode::S_IFDIR | 0o750, 2));

    let setuid = fs::metadata(m.path("setuid")).unwrap();
    assert_eq!(setuid.mode(), mode::S_IFREG | 0o4755);
    assert_eq!((setuid.uid(), setuid.gid()), (3_000_000, 4_000_000));
    assert_eq!(setuid.size(), 18);

    let big = fs::metadata(m.path("big")).unwrap();
    assert_eq!((big.size(), big.blocks(), big.blksize()), (BIG_LEN as u64, (BIG_LEN as u64).div_ceil(512), 4096));
    assert_eq!((big.mtime(), big.mtime_nsec()), (NS_MTIME.sec, NS_MTIME.nsec as i64));
    assert_eq!((big.atime(), big.atime_nsec()), (NS_MTIME.sec, NS_MTIME.nsec as i64));
    assert_eq!((big.ctime(), big.ctime_nsec()), (NS_MTIME.sec, NS_MTIME.nsec as i64));

    // A hard-link group is one inode with the archive's link count.
    let a = fs::metadata(m.path("hardlink")).unwrap();
    let b = fs::metadata(m.path("dir/hardlink2")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_ne!(a.ino(), big.ino());

    let chr = fs::symlink_metadata(m.path("chardev")).unwrap();
    assert!(chr.file_type().is_char_device());
    assert_eq!((libc::major(chr.rdev()), libc::minor(chr.rdev())), (4, 64));
    let blk = fs::symlink_metadata(m.path("blockdev")).unwrap();
    assert!(blk.file_type().is_block_device());
    assert_eq!((libc::major(blk.rdev()), libc::minor(blk.rdev())), (259, 65537));
    assert!(fs::symlink_metadata(m.path("fifo")).unwrap().file_type().is_fifo());

    assert_eq!(fs::read_link(m.path("symlink")).unwrap(), Path::new("dir/nested.txt"));
    assert_eq!(fs::read_link(m.path("dangling")).unwrap(), Path::new("/nonexistent/target"));
    assert_eq!(fs::read(m.path("symlink")).unwrap(), b"nested\n");
    assert_eq!(fs::symlink_metadata(m.path("symlink")).unwrap().size(), 14);
    assert_eq!(errno(&fs::metadata(m.path("dangling")).unwrap_err()), libc::ENOENT);

    // Xattrs, through the size-probe protocol (the xattr crate asks for the size first).
    let setuid_path = m.path("setuid");
    assert_eq!(xattr::get(&setuid_path, "user.comment").unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(xattr::get(&setuid_path, "security.capability").unwrap().as_deref(), Some(&CAPABILITY[..]));
    assert_eq!(xattr::get(&setuid_path, "user.missing").unwrap(), None);
    let listed: BTreeSet<String> =
        xattr::list(&setuid_path).unwrap().map(|n| n.to_string_lossy().into_owned()).collect();
    assert_eq!(listed, ["security.capability", "user.comment"].iter().map(|s| s.to_string()).collect());
    assert_eq!(xattr::list(m.path("big")).unwrap().count(), 0);
    let c_path = CString::new(setuid_path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new("user.comment").unwrap();
    let mut small = [0u8; 2];
    // SAFETY: valid C strings and a buffer of the length passed.
    let rc = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!((rc, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ERANGE)));

    // statfs: inodes = node count, name limit 255, blocks cover the file bytes.
    let c_root = CString::new(m.root().as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain old data; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c_root.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_files, m.store.archive().node_count() as u64);
    assert_eq!((st.f_namemax, st.f_bsize, st.f_bfree), (255, 4096, 0));
    assert!(st.f_blocks >= (BIG_LEN as u64).div_ceil(4096));
    assert!(st.f_flag & libc::ST_RDONLY != 0);

    // Names: non-ASCII and 255 bytes work; a miss is cached by the kernel (one lookup for two stats).
    assert_eq!(fs::read(m.path(UNICODE)).unwrap(), "grüße\n".as_bytes());
    assert_eq!(fs::read(m.path(&long_name())).unwrap(), b"long\n");
    let before = m.stats.op(Op::Lookup).count;
    for _ in 0..2 {
        assert_eq!(fs::metadata(m.path("missing")).unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert_eq!(m.stats.op(Op::Lookup).count - before, 1, "negative lookups must be cached");
    let listings = m.stats.op(Op::Readdir).count + m.stats.op(Op::Readdirplus).count;
    assert!(listings > 0 && m.stats.op(Op::Getxattr).count > 0);
    m.unmount();
}

#[test]
fn file_contents_at_odd_offsets_and_across_spans() {
    let (m, _) = mount_default();
    let expected = pattern(1, BIG_LEN);
    let file = File::open(m.path("big")).unwrap();
    let span = SPAN as usize;
    for (offset, len) in [(12_345, 4321), (span - 1, 2), (2 * span - 7, 70_000), (0, 1), (BIG_LEN - 1, 10)] {
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, offset as u64).unwrap();
        let want = &expected[offset..(offset + len).min(BIG_LEN)];
        assert_eq!(&buf[..n], want, "read of {len} at {offset}");
    }
    let mut buf = [0u8; 5];
    assert_eq!(file.read_at(&mut buf, BIG_LEN as u64).unwrap(), 0, "reading at EOF");
    assert_eq!(fs::read(m.path("big")).unwrap(), expected);
    assert_eq!(fs::read(m.path("dir/hardlink2")).unwrap(), pattern(3, 5000));
    assert_eq!(fs::read(m.path("empty")).unwrap(), b"");
    let mut whole = Vec::new();
    File::open(m.path("slow")).unwrap().read_to_end(&mut whole).unwrap();
    assert_eq!(whole, pattern(4, 10_000));
    let s = m.stats.snapshot();
    assert!(s.op(Op::Read).count > 0 && s.read_bytes >= BIG_LEN as u64);
    assert_eq!(s.read_errors, 0);
    // An open file keeps the mount busy; the handle survives the failed attempt.
    let mut m = m;
    let busy = m.try_unmount().expect_err("unmount with an open file");
    assert!(matches!(busy, FsError::Busy { .. }), "{busy}");
    assert!(busy.to_string().contains("umount -l"), "{busy}");
    assert_eq!(fs::read(m.path("empty")).unwrap(), b"", "still mounted and serving");
    drop(file);
    m.unmount();
}

#[test]
fn writes_are_refused_with_erofs() {
    fn check_all(m: &Mounted) {
        let e = |r: std::io::Result<()>| errno(&r.expect_err("a write must fail"));
        assert_eq!(e(File::create(m.path("new")).map(drop)), libc::EROFS);
        assert_eq!(e(OpenOptions::new().write(true).open(m.path("big")).map(drop)), libc::EROFS);
        assert_eq!(e(OpenOptions::new().read(true).write(true).open(m.path("big")).map(drop)), libc::EROFS);
        assert_eq!(e(fs::remove_file(m.path("big"))), libc::EROFS);
        assert_eq!(e(fs::create_dir(m.path("newdir"))), libc::EROFS);
        assert_eq!(e(fs::remove_dir(m.path("dir"))), libc::EROFS);
        assert_eq!(e(fs::rename(m.path("big"), m.path("big2"))), libc::EROFS);
        assert_eq!(e(std::os::unix::fs::symlink("x", m.path("newlink"))), libc::EROFS);
        assert_eq!(e(fs::hard_link(m.path("big"), m.path("newhard"))), libc::EROFS);
        assert_eq!(e(fs::set_permissions(m.path("big"), fs::Permissions::from_mode(0o600))), libc::EROFS);
        assert_eq!(e(xattr::set(m.path("big"), "user.x", b"1")), libc::EROFS);
        assert_eq!(e(xattr::remove(m.path("setuid"), "user.comment")), libc::EROFS);
        assert_eq!(fs::read(m.path("big")).unwrap().len(), BIG_LEN, "the image is unchanged");
    }
    // Mounted read-only, the kernel refuses writes itself...
    let (m, _) = mount_default();
    check_all(&m);
    m.unmount();
    // ... and mounted read-write, every write operation reaches the filesystem and gets EROFS.
    let m = mount_permissive();
    check_all(&m);
    let s = m.stats.snapshot();
    assert!(s.erofs >= 12, "EROFS answers counted: {s:?}");
    assert!(s.op(Op::Write).count >= 10, "write operations counted: {s:?}");
    m.unmount();
}

#[test]
fn access_honours_mode_bits() {
    let m = mount_permissive();
    let access = |rel: &str, mask: i32| {
        let c = CString::new(m.path(rel).as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        match unsafe { libc::access(c.as_ptr(), mask) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
        }
    };
    // Root passes everything but execute of a file without any x bit; writes are EROFS.
    assert_eq!(access("secret", libc::R_OK), Ok(()));
    assert_eq!(access("big", libc::X_OK), Err(libc::EACCES));
    assert_eq!(access("setuid", libc::X_OK), Ok(()));
    assert_eq!(access("dir", libc::X_OK), Ok(()));
    assert_eq!(access("big", libc::W_OK), Err(libc::EROFS));
    // Other users get the "other" bits.
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("/usr/bin/test")
            .args(args)
            .uid(65534)
            .gid(65534)
            .status()
            .expect("run /usr/bin/test as nobody")
            .success()
    };
    let p = |rel: &str| m.path(rel).to_string_lossy().into_owned();
    assert!(as_nobody(&["-r", &p("big")]));
    assert!(!as_nobody(&["-r", &p("secret")]));
    assert!(!as_nobody(&["-x", &p("big")]));
    assert!(as_nobody(&["-x", &p("setuid")]));
    assert!(!as_nobody(&["-r", &p("dir")]), "dir is 0750");
    assert!(m.stats.op(Op::Access).count >= 5);
    m.unmount();
}

#[test]
fn a_slow_read_does_not_block_listing_or_other_reads() {
    let (archive, layer, files) = image();
    let slow = files["slow"];
    let mut blobs = TestBlobs::new(layer);
    blobs.slow = Some(slow.offset..slow.offset + slow.size);
    let m = Mounted::new(archive, blobs, MountSpec::default());
    let slow_path = m.path("slow");
    let reader = std::thread::spawn(move || fs::read(slow_path));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !m.blobs.slow_started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the slow read never reached the blob source");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    assert!(fs::read_dir(m.root()).unwrap().count() > 10);
    assert_eq!(fs::read(m.path("big")).unwrap(), pattern(1, BIG_LEN));
    assert_eq!(fs::read(m.path("dir/nested.txt")).unwrap(), b"nested\n");
    let elapsed = start.elapsed();
    assert!(
        !m.blobs.slow_finished.load(Ordering::SeqCst),
        "other requests must be answered while the slow fetch is still running (took {elapsed:?})"
    );
    assert!(elapsed < Duration::from_secs(1), "ls and another read took {elapsed:?}");
    assert_eq!(reader.join().unwrap().unwrap(), pattern(4, 10_000), "the slow read still gets its bytes");
    m.unmount();
}

#[test]
fn corrupt_layer_bytes_give_eio_not_wrong_data() {
    let (archive, layer, files) = image();
    let bad = files["corrupt"];
    let mut blobs = TestBlobs::new(layer);
    blobs.corrupt = Some(bad.offset + 1000..bad.offset + 1001);
    let m = Mounted::new(archive, blobs, MountSpec::default());
    let err = fs::read(m.path("corrupt")).expect_err("corrupt bytes must not be served");
    assert_eq!(errno(&err), libc::EIO);
    assert_eq!(fs::read(m.path("big")).unwrap(), pattern(1, BIG_LEN), "other files are unaffected");
    assert!(m.stats.snapshot().read_errors >= 1);
    assert!(m.store.stats().verify_failures >= 1);
    m.unmount();
}

/// Serves one file's exact bytes from a local file.
struct LocalCopy {
    data: DataRef,
    path: std::path::PathBuf,
}

impl PassthroughSource for LocalCopy {
    fn local_file(&self, data: DataRef) -> Option<File> {
        (data == self.data).then(|| File::open(&self.path).unwrap())
    }
}

/// `(major, minor)` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn passthrough_hands_local_files_to_the_kernel() {
    let (archive, layer, files) = image();
    let local = files["corrupt"];
    // The blob source corrupts this file: correct bytes can only come from the local copy.
    let mut blobs = TestBlobs::new(layer);
    blobs.corrupt = Some(local.offset..local.offset + 1);
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("copy");
    fs::write(&copy, pattern(5, 20_000)).unwrap();
    let source = Arc::new(LocalCopy { data: local, path: copy });
    let m = Mounted::new(archive, blobs, MountSpec { options: MountOptions::default(), passthrough: Some(source) });
    let granted = m.stats.snapshot().passthrough_granted;
    assert!(
        granted || kernel_version() < (6, 9),
        "kernel {:?} supports passthrough but it was not granted",
        kernel_version()
    );
    let first = File::open(m.path("corrupt")).unwrap();
    let second = File::open(m.path("corrupt")).unwrap();
    let mut buf = vec![0u8; 20_000];
    if granted {
        first.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, pattern(5, 20_000));
        let mut part = [0u8; 100];
        second.read_exact_at(&mut part, 12_345).unwrap();
        assert_eq!(&part[..], &pattern(5, 20_000)[12_345..12_445]);
        let s = m.stats.snapshot();
        assert_eq!(s.passthrough_opens, 2);
        assert_eq!((s.read_errors, s.op(Op::Read).count), (0, 0), "passthrough reads never reach userspace");
    } else {
        // Without kernel support the open falls back to reads through the store (which refuses bad bytes).
        assert_eq!(errno(&first.read_at(&mut buf, 0).unwrap_err()), libc::EIO);
        assert_eq!(m.stats.snapshot().passthrough_opens, 0);
    }
    drop((first, second));
    // Files the source does not have are read through the store as usual.
    assert_eq!(fs::read(m.path("big")).unwrap(), pattern(1, BIG_LEN));
    m.unmount();
}

#[test]
fn wait_returns_when_unmounted_from_outside() {
    let (archive, layer, _) = image();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let blobs = Arc::new(TestBlobs::new(layer));
    let store = Arc::new(clip_store::ContentStore::new(archive, blobs, Default::default()));
    let dir = tempfile::tempdir().unwrap();
    let handle = mount(ClipFs::new(store, rt.handle().clone()), dir.path(), &MountOptions::default()).unwrap();
    assert!(is_fuse_mounted(dir.path()));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(handle.wait()).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "wait must block while mounted");
    let status = std::process::Command::new("umount").arg(dir.path()).status().unwrap();
    assert!(status.success(), "umount failed");
    let result = rx.recv_timeout(Duration::from_secs(5)).expect("wait did not return after umount");
    result.unwrap();
    assert!(!is_fuse_mounted(dir.path()));
}

#[test]
fn mount_errors_say_what_is_wrong() {
    let (archive, layer, _) = image();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = Arc::new(clip_store::ContentStore::new(archive, Arc::new(TestBlobs::new(layer)), Default::default()));
    let fs_for = || ClipFs::new(store.clone(), rt.handle().clone());
    let err = mount(fs_for(), Path::new("/nonexistent/clip-mnt"), &MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::MountpointMissing { .. }), "{err}");
    assert!(err.to_string().contains("mkdir -p /nonexistent/clip-mnt"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = mount(fs_for(), file.path(), &MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::MountpointNotDir { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), "x").unwrap();
    let err = mount(fs_for(), dir.path(), &MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::MountpointNotEmpty { .. }), "{err}");
    assert!(!is_fuse_mounted(dir.path()));
}

#[test]
fn dropping_the_handle_detaches_the_mount() {
    let (mut m, _) = mount_default();
    let open = File::open(m.path("big")).unwrap();
    assert!(is_fuse_mounted(m.dir.path()));
    // What happens when a test fails half-way: the handle is dropped with a file still open.
    m.drop_handle();
    assert!(!is_fuse_mounted(m.dir.path()), "a dropped handle must detach the mount even while busy");
    drop(open);
}

/// Directories of `per_dir` files under `top/dNN`, file `fNNNN` holding `NNNN` bytes mod 97.
fn wide_tree(t: &mut TreeBuilder, top: &str, dirs: usize, per_dir: usize) {
    let top = t.dir(Ino::ROOT, top, 0o755);
    for d in 0..dirs {
        let dir = t.dir(top, &format!("d{d:02}"), 0o755);
        for f in 0..per_dir {
            t.file(dir, &format!("f{f:04}"), &vec![b'x'; f % 97], |_| {});
        }
    }
}

/// Runs `find` (its own process, so the mount sees its pid) and returns its output lines.
fn find(args: &[&std::ffi::OsStr]) -> Vec<String> {
    let out = std::process::Command::new("find").args(args).output().expect("find runs");
    assert!(out.status.success(), "find {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn a_walk_that_only_lists_gets_names_only_and_a_walk_that_stats_gets_attributes_after_its_first_directory() {
    const DIRS: usize = 4;
    const PER_DIR: usize = 1500;
    let mut t = TreeBuilder::new();
    wide_tree(&mut t, "names", DIRS, PER_DIR);
    wide_tree(&mut t, "stats", DIRS, PER_DIR);
    let (archive, layer) = t.finish();
    let m = Mounted::new(archive, TestBlobs::new(layer), MountSpec::default());
    let lookups = || m.stats.op(Op::Lookup).count;

    // `find -type f | wc -l`: every name, typed from the listing alone (no per-file LOOKUP), and most
    // batches names only (the kernel builds no inode for those entries).
    let before = (lookups(), m.stats.snapshot().names_only_batches);
    let listed = find(&[m.path("names").as_os_str(), "-type".as_ref(), "f".as_ref()]);
    assert_eq!(listed.len(), DIRS * PER_DIR);
    let expected: BTreeSet<String> = (0..DIRS)
        .flat_map(|d| (0..PER_DIR).map(move |f| format!("d{d:02}/f{f:04}")))
        .map(|rel| m.path("names").join(rel).to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), expected);
    let names_lookups = lookups() - before.0;
    assert!(names_lookups <= 1 + DIRS as u64, "a names-only walk looked up {names_lookups} names");
    assert!(m.stats.snapshot().names_only_batches > before.1, "no batch was answered names only");

    // `find -printf '%s'` stats each file: its first directory's names-only entries are looked up, and then
    // it is answered full entries, so the other directories cost (nearly) no LOOKUP per file.
    let before = lookups();
    let sizes =
        find(&[m.path("stats").as_os_str(), "-type".as_ref(), "f".as_ref(), "-printf".as_ref(), "%s\n".as_ref()]);
    let total: u64 = sizes.iter().map(|s| s.parse::<u64>().unwrap()).sum();
    assert_eq!(total, (DIRS as u64) * (0..PER_DIR as u64).map(|f| f % 97).sum::<u64>());
    let stat_lookups = lookups() - before;
    assert!(
        stat_lookups < (PER_DIR + PER_DIR / 2) as u64,
        "{stat_lookups} LOOKUPs for {} stats: the walk was not switched to full entries",
        DIRS * PER_DIR
    );
    m.unmount();
}
