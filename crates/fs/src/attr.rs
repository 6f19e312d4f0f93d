//! Turning archive records into what the kernel wants: [`FileAttr`] from a [`NodeView`], the 32-bit device
//! number FUSE carries, and the permission check behind `access(2)`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clip_format::{mode, NodeKind, NodeView, Timestamp};
use fuser::{FileAttr, FileType, INodeNo};

/// `st_blksize` of every inode, and the size reported for directories.
pub(crate) const BLOCK_SIZE: u32 = 4096;

/// The kernel's file type for an archive node kind.
pub(crate) fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

/// A point in time as `SystemTime`; out-of-range values (hostile input) clamp to the epoch.
pub(crate) fn system_time(t: Timestamp) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let whole = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    whole.and_then(|w| w.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// Linux's `new_encode_dev`: the 32-bit device number `fuse_attr.rdev` carries (major < 4096, minor < 2^20;
/// larger values cannot be represented by FUSE and are truncated).
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The attributes of `node` as `stat` shows them.
pub(crate) fn file_attr(node: &NodeView) -> FileAttr {
    let kind = node.kind();
    let size = if kind == NodeKind::Dir { u64::from(BLOCK_SIZE) } else { node.size };
    let time = system_time(node.mtime);
    let (major, minor) = node.rdev();
    FileAttr {
        ino: INodeNo(u64::from(node.ino.0)),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: file_type(kind),
        perm: (node.mode & 0o7777) as u16,
        nlink: node.nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: encode_dev(major, minor),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Attributes for a negative lookup reply: inode 0 tells the kernel "no such entry, cache that".
pub(crate) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The caller of an `access(2)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Whether `caller` may access an inode with `file_mode`, `uid` and `gid` for `mask` (`R_OK|W_OK|X_OK` bits;
/// 0 = existence). Owner bits apply to the owner, group bits to the group, other bits to the rest; root
/// passes every check except execute of a non-directory without any `x` bit. Supplementary groups are not
/// known to FUSE and are not considered. Write permission is answered by the caller (the image is read-only).
pub(crate) fn may_access(file_mode: u32, uid: u32, gid: u32, caller: Caller, mask: u32) -> bool {
    let mask = mask & 0o7;
    if mask == 0 {
        return true;
    }
    if caller.uid == 0 {
        let is_dir = file_mode & mode::S_IFMT == mode::S_IFDIR;
        return mask & 0o1 == 0 || is_dir || file_mode & 0o111 != 0;
    }
    let bits = if caller.uid == uid {
        file_mode >> 6
    } else if caller.gid == gid {
        file_mode >> 3
    } else {
        file_mode
    } & 0o7;
    bits & mask == mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_through_the_kernel_encoding() {
        // The kernel's new_decode_dev.
        let decode = |dev: u32| ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00));
        for (major, minor) in [(0, 0), (1, 3), (8, 1), (259, 65537), (4095, (1 << 20) - 1)] {
            assert_eq!(decode(encode_dev(major, minor)), (major, minor));
        }
    }

    #[test]
    fn times_keep_nanoseconds_and_handle_negative_seconds() {
        let t = system_time(Timestamp { sec: 1_700_000_000, nsec: 123_456_789 });
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap(), Duration::new(1_700_000_000, 123_456_789));
        let before = system_time(Timestamp { sec: -10, nsec: 500 });
        assert_eq!(UNIX_EPOCH.duration_since(before).unwrap(), Duration::new(9, 999_999_500));
        // Hostile values do not panic.
        let _ = system_time(Timestamp { sec: i64::MIN, nsec: u32::MAX });
        let _ = system_time(Timestamp { sec: i64::MAX, nsec: u32::MAX });
    }

    #[test]
    fn access_follows_owner_group_other_bits() {
        let file = mode::S_IFREG | 0o640;
        let owner = Caller { uid: 1000, gid: 1 };
        let group = Caller { uid: 1001, gid: 50 };
        let other = Caller { uid: 1002, gid: 2 };
        assert!(may_access(file, 1000, 50, owner, 0o6));
        assert!(!may_access(file, 1000, 50, owner, 0o1));
        assert!(may_access(file, 1000, 50, group, 0o4));
        assert!(!may_access(file, 1000, 50, group, 0o2));
        assert!(!may_access(file, 1000, 50, other, 0o4));
        assert!(may_access(file, 1000, 50, other, 0));
        // Owner bits decide for the owner even when other bits are wider.
        assert!(!may_access(mode::S_IFREG | 0o044, 1000, 50, owner, 0o4));
    }

    #[test]
    fn root_passes_except_execute_without_any_x_bit() {
        let root = Caller { uid: 0, gid: 0 };
        assert!(may_access(mode::S_IFREG, 5, 5, root, 0o6));
        assert!(!may_access(mode::S_IFREG | 0o644, 5, 5, root, 0o1));
        assert!(may_access(mode::S_IFREG | 0o010, 5, 5, root, 0o1));
        assert!(may_access(mode::S_IFDIR, 5, 5, root, 0o1));
    }
}
