//! The format crate's error type: each way a `.clip` file can be unreadable has its own variant, naming
//! the section, record or offset involved and what was expected there.

use std::path::PathBuf;

/// Why a `.clip` file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the index")]
    Write(#[source] std::io::Error),
    #[error("not a .clip file (bad magic); was it built with `clip index` or `clip archive`?")]
    BadMagic,
    #[error("unsupported .clip format version {found} (this clip reads version {supported}); rebuild the index with this clip")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("unknown archive kind {0} in header (expected 1 = data-carrying, 2 = index-only or 3 = layer part); was it written by a newer clip?")]
    UnknownKind(u16),
    #[error(".clip file is truncated: {what} needs bytes up to {needed}, file has {len}")]
    Truncated { what: String, needed: u64, len: u64 },
    #[error("checksum mismatch in {what} (file is corrupt; rebuild or re-download it)")]
    Checksum { what: String },
    #[error("this is a layer part (the index of one layer, kept to be reused), not an image index or archive")]
    LayerPart,
    #[error("required section {0} is missing")]
    MissingSection(&'static str),
    #[error(
        "corrupt .clip file: {0} (the file is damaged or hostile; rebuild it with `clip index` or `clip archive`)"
    )]
    Corrupt(Corruption),
    /// A size or offset recorded in the index that cannot be right (checked at open, before any use).
    #[error(
        "corrupt index: {what} (the .clip file is damaged or hostile; rebuild it with `clip index` or `clip archive`)"
    )]
    BadSize { what: String },
    #[error("archive was loaded remotely: read {start}..{end} from where it is stored, not from the local copy")]
    NotLocal { start: u64, end: u64 },
    #[error("metadata section is not valid JSON")]
    Meta(#[source] serde_json::Error),
    #[error("invalid digest {input:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest { input: String },
    #[error("invalid index contents: {0}")]
    Invalid(String),
}

/// What is wrong in a damaged `.clip` file: the section, record or offset, and what was expected there.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("the section table has {count} entries, at most {max} are allowed")]
    SectionCount { count: u32, max: u32 },
    #[error("section {section} claims {raw_len} bytes uncompressed, more than the {max} clip loads")]
    SectionTooLarge { section: String, raw_len: u64, max: u64 },
    #[error("section {section} does not decompress: {why}")]
    SectionDecode { section: String, why: std::io::Error },
    #[error("section {section} decompressed to {actual} bytes, the table says {expected}")]
    SectionLength { section: String, expected: u64, actual: u64 },
    #[error("section {section} is {len} bytes, not a whole number of {record}-byte records")]
    PartialRecord { section: &'static str, len: usize, record: usize },
    #[error("the root inode is not a directory")]
    RootNotDir,
    #[error("inode {ino} is out of range (the node table has {count})")]
    InodeRange { ino: crate::Ino, count: usize },
    #[error("inode {ino} has mode {mode:o}, which names no file type")]
    NoFileType { ino: crate::Ino, mode: u32 },
    #[error("inode {ino} is not a symlink")]
    NotSymlink { ino: crate::Ino },
    #[error("string at {offset}+{len} lies outside the {size}-byte string table")]
    StringRange { offset: u64, len: u32, size: usize },
    #[error("entry {index} of directory inode {dir} lies outside the entry table")]
    EntryRange { dir: crate::Ino, index: u32 },
    #[error("the {count} xattrs of inode {ino} from record {first} lie outside the xattr table")]
    XattrRange { ino: crate::Ino, first: u32, count: u32 },
    #[error("layer {layer} is out of range (the index has {count} layers)")]
    LayerRange { layer: crate::LayerIndex, count: usize },
    #[error("layer {layer} names spans {first}..{end}, beyond the {count} of the span table")]
    LayerSpans { layer: crate::LayerIndex, first: u64, end: u64, count: usize },
    #[error("layer {layer} has no spans")]
    NoSpans { layer: crate::LayerIndex },
    #[error("span {span} is out of range (the span table has {count})")]
    SpanRange { span: crate::SpanId, count: usize },
    #[error("span {span} ends at uncompressed offset {end}, before it starts at {start}")]
    SpanBackwards { span: crate::SpanId, start: u64, end: u64 },
    #[error("span {span} does not cover offset {offset} of layer {layer}, which it was found for")]
    SpanGap { layer: crate::LayerIndex, span: crate::SpanId, offset: u64 },
    #[error("a file's {size} bytes at offset {offset} of layer {layer} overflow a 64-bit offset")]
    DataOverflow { layer: crate::LayerIndex, offset: u64, size: u64 },
    #[error("the window of span {span} ({len} bytes at {offset}) lies outside the {section_len}-byte WIND section")]
    WindowRange { span: crate::SpanId, offset: u64, len: u32, section_len: u64 },
    #[error("a checkpoint window does not decompress: {0}")]
    Window(std::io::Error),
    #[error("expected a layer part, found an archive of kind {found}")]
    NotAPart { found: crate::ArchiveKind },
    #[error("the {len}-byte CHNK section does not hold the chunk digests of a {size}-byte layer with {spans} spans")]
    ChunkSection { len: usize, size: u64, spans: usize },
    #[error("entry {entry} of the layer part has the unknown kind {code}")]
    EntryKind { entry: usize, code: u8 },
    #[error("the {count} xattrs of entry {entry} from record {first} lie outside the xattr table")]
    EntryXattrs { entry: usize, first: u32, count: u32 },
    #[error("the startup set ({len} bytes) is not a list of at most {max} inode numbers")]
    StartupLength { len: usize, max: usize },
    #[error("the startup set names inode {ino}, which is not a regular file")]
    StartupEntry { ino: crate::Ino },
    #[error("inode {ino} is not an entry of directory {parent}, which its record names as its parent")]
    NotInParent { ino: crate::Ino, parent: crate::Ino },
}

impl From<Corruption> for FormatError {
    fn from(c: Corruption) -> FormatError {
        FormatError::Corrupt(c)
    }
}
