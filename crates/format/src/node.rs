//! Inodes as the writer takes them ([`NodeSpec`]) and the small value types shared by writer and reader.

use serde::{Deserialize, Serialize};

/// An inode number inside one archive. The root directory is [`Ino::ROOT`]; inode `n` is the `n-1`th record
/// of the node table, so numbers are dense and stable for the same input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ino(pub u32);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);

    /// Index of this inode's record in the node table.
    pub fn index(self) -> usize {
        (self.0 as usize).saturating_sub(1)
    }

    /// The inode whose record sits at `index` of the node table.
    pub fn from_index(index: usize) -> Ino {
        Ino(index as u32 + 1)
    }
}

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point in time with nanoseconds, as tar's PAX `mtime` and `stat` carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (may be negative).
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// What an inode is; derived from the `S_IFMT` bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// `S_IFMT` and the file type bits, as Linux defines them (the on-disk contract, not the host's libc).
pub mod mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

impl NodeKind {
    /// The kind named by the type bits of `mode`, if they name one.
    pub fn from_mode(m: u32) -> Option<NodeKind> {
        Some(match m & mode::S_IFMT {
            mode::S_IFREG => NodeKind::File,
            mode::S_IFDIR => NodeKind::Dir,
            mode::S_IFLNK => NodeKind::Symlink,
            mode::S_IFCHR => NodeKind::CharDevice,
            mode::S_IFBLK => NodeKind::BlockDevice,
            mode::S_IFIFO => NodeKind::Fifo,
            mode::S_IFSOCK => NodeKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` type bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            NodeKind::File => mode::S_IFREG,
            NodeKind::Dir => mode::S_IFDIR,
            NodeKind::Symlink => mode::S_IFLNK,
            NodeKind::CharDevice => mode::S_IFCHR,
            NodeKind::BlockDevice => mode::S_IFBLK,
            NodeKind::Fifo => mode::S_IFIFO,
            NodeKind::Socket => mode::S_IFSOCK,
        }
    }
}

/// One extended attribute, name and value as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where a regular file's bytes are: `size` bytes at `offset` of layer `layer`'s uncompressed stream
/// (for data-carrying archives: of the archive's data stream, layer 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DataRef {
    pub layer: crate::LayerIndex,
    pub offset: u64,
    pub size: u64,
}

/// What an inode holds besides its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file (`mode` has `S_IFREG`).
    File(DataRef),
    /// A directory and its entries (any order; the writer sorts them by name bytes). Names must be single
    /// path components: not empty, no `/`, not `.` or `..`.
    Dir(Vec<(Vec<u8>, Ino)>),
    /// A symbolic link and its target, unchanged.
    Symlink(Vec<u8>),
    /// A character or block device (the kind comes from `mode`).
    Device { major: u32, minor: u32 },
    /// A FIFO or socket: nothing but attributes.
    Special,
}

/// One inode as the writer takes it. Hard links are several directory entries naming the same [`Ino`];
/// the writer computes `nlink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Full `st_mode`: type bits, permissions, setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Sorted by name on write.
    pub xattrs: Vec<Xattr>,
    pub content: Content,
}
