//! [`TarEntry`]: one file-system object of a layer's tar stream, as the indexer's tar parser reports it and as
//! a layer part keeps it (whiteouts and opaque markers included, in stream order).

use crate::{Timestamp, Xattr};

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file (`0`, NUL, or contiguous `7`).
    File,
    /// Another name for an earlier entry (`1`); [`TarEntry::link_target`] is the normalized target path.
    HardLink,
    /// A symbolic link (`2`); [`TarEntry::link_target`] is the target exactly as written.
    Symlink,
    CharDevice,
    BlockDevice,
    Dir,
    Fifo,
}

impl EntryKind {
    /// The code stored in a part's `ENTR` record.
    pub(crate) fn code(self) -> u8 {
        match self {
            EntryKind::File => 0,
            EntryKind::HardLink => 1,
            EntryKind::Symlink => 2,
            EntryKind::CharDevice => 3,
            EntryKind::BlockDevice => 4,
            EntryKind::Dir => 5,
            EntryKind::Fifo => 6,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<EntryKind> {
        Some(match code {
            0 => EntryKind::File,
            1 => EntryKind::HardLink,
            2 => EntryKind::Symlink,
            3 => EntryKind::CharDevice,
            4 => EntryKind::BlockDevice,
            5 => EntryKind::Dir,
            6 => EntryKind::Fifo,
            _ => return None,
        })
    }
}

/// One file-system object of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Normalized and relative, no trailing slash; `b""` is the root directory. Raw bytes.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content length of a regular file; 0 for every other kind.
    pub size: u64,
    pub mtime: Timestamp,
    /// Symlink target as written, or normalized hard-link target; empty for other kinds.
    pub link_target: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` records, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Stream offset of the first content byte (for kinds without content: just past the header).
    pub data_offset: u64,
    /// Stream offset of the entry's first header block (its first PAX or GNU long-name header, if any).
    pub header_offset: u64,
}
