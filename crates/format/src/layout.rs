//! The byte layout: header, section table and the fixed-size records, all little-endian.
//!
//! ```text
//! header (32 bytes)
//!   0  magic        [u8; 8]  = 89 'C' 'L' 'I' 'P' 0D 0A 1A
//!   8  version      u16      = FORMAT_VERSION
//!  10  kind         u16      1 = data-carrying (v1), 2 = index-only (v2), 3 = layer part
//!  12  sections     u32      number of section table entries
//!  16  table_offset u64      where the section table starts
//!  24  table_crc    u32      crc32c of the section table
//!  28  header_crc   u32      crc32c of bytes 0..28
//! section table entry (40 bytes)
//!   0 id [u8; 4]  4 flags u32  8 offset u64  16 stored_len u64  24 raw_len u64  32 crc32c u32  36 reserved u32
//! ```
//! A section flagged `ZSTD` is one zstd frame holding `raw_len` bytes; a `LAZY` section is not read at open
//! (window, chunk-digest and data sections: each record inside has its own digest or is verified by the span
//! digest; the chunk digests are checked against the section checksum on first use).

pub const MAGIC: [u8; 8] = [0x89, b'C', b'L', b'I', b'P', 0x0d, 0x0a, 0x1a];
pub const FORMAT_VERSION: u16 = 2;
pub const HEADER_LEN: usize = 32;
pub const SECTION_ENTRY_LEN: usize = 40;

pub const FLAG_ZSTD: u32 = 1;
pub const FLAG_LAZY: u32 = 2;

pub const SEC_META: [u8; 4] = *b"META";
pub const SEC_NODE: [u8; 4] = *b"NODE";
pub const SEC_DENT: [u8; 4] = *b"DENT";
pub const SEC_STRS: [u8; 4] = *b"STRS";
pub const SEC_XATR: [u8; 4] = *b"XATR";
pub const SEC_SPAN: [u8; 4] = *b"SPAN";
pub const SEC_WIND: [u8; 4] = *b"WIND";
pub const SEC_DATA: [u8; 4] = *b"DATA";
/// Digests of the layers' compressed chunks and of the spans' windows (lazy): see [`crate::Chunks`].
pub const SEC_CHNK: [u8; 4] = *b"CHNK";
/// A layer part's tar entries, in stream order.
pub const SEC_ENTR: [u8; 4] = *b"ENTR";
/// The startup set of an index (optional): u32 inode numbers of the files a start of the image's
/// entrypoint opens first, in that order (see [`crate::Archive::startup_set`]).
pub const SEC_STRT: [u8; 4] = *b"STRT";
/// What opening a file loads next (optional, lazy, zstd): see [`crate::NextFiles`].
pub const SEC_NEXT: [u8; 4] = *b"NEXT";
/// What a layer part's files load (JSON): see [`crate::PartLoads`].
pub const SEC_LOAD: [u8; 4] = *b"LOAD";

/// Node record: mode u32, uid u32, gid u32, nlink u32, mtime_sec i64, mtime_nsec u32, layer u32, size u64,
/// data u64, extra u32, xattr_first u32, xattr_count u32, parent u32.
pub const NODE_LEN: usize = 64;
/// Directory entry: name_off u32, name_len u32, ino u32.
pub const DENT_LEN: usize = 12;
/// Xattr: name_off u32, name_len u32, value_off u32, value_len u32 (offsets into STRS).
pub const XATTR_LEN: usize = 16;
/// Span: out_offset u64, in_offset u64, window_off u64, window_len u32, bits u8, 3 reserved, digest [u8; 32].
pub const SPAN_LEN: usize = 64;

/// Tar entry of a layer part: kind u8, 3 reserved, mode u32, uid u32, gid u32, mtime_sec i64, mtime_nsec u32,
/// dev_major u32, dev_minor u32, size u64, data_offset u64, header_offset u64, path_off u32, path_len u32,
/// link_off u32, link_len u32, xattr_first u32, xattr_count u32, 4 reserved (offsets into STRS and XATR).
pub const ENTRY_LEN: usize = 88;

/// What kind of archive a `.clip` file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// v1: file data is inside the archive (local disk or S3).
    DataCarrying,
    /// v2: metadata only; file data stays in the image's layer blobs.
    IndexOnly,
    /// The index of one layer on its own (its tar entries, spans and windows): see [`crate::LayerPart`].
    LayerPart,
}

impl ArchiveKind {
    pub fn code(self) -> u16 {
        match self {
            ArchiveKind::DataCarrying => 1,
            ArchiveKind::IndexOnly => 2,
            ArchiveKind::LayerPart => 3,
        }
    }

    pub fn from_code(code: u16) -> Option<ArchiveKind> {
        match code {
            1 => Some(ArchiveKind::DataCarrying),
            2 => Some(ArchiveKind::IndexOnly),
            3 => Some(ArchiveKind::LayerPart),
            _ => None,
        }
    }
}

impl std::fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveKind::DataCarrying => "data-carrying (v1)",
            ArchiveKind::IndexOnly => "index-only (v2)",
            ArchiveKind::LayerPart => "layer part",
        })
    }
}

/// One section table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionEntry {
    pub id: [u8; 4],
    pub flags: u32,
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    pub crc: u32,
}

impl SectionEntry {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.id).into_owned()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> SectionEntry {
        let mut r = Le(b);
        let id = [b[0], b[1], b[2], b[3]];
        r.0 = &b[4..];
        SectionEntry { id, flags: r.u32(), offset: r.u64(), stored_len: r.u64(), raw_len: r.u64(), crc: r.u32() }
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub kind_code: u16,
    pub sections: u32,
    pub table_offset: u64,
    pub table_crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.kind_code.to_le_bytes());
        out.extend_from_slice(&self.sections.to_le_bytes());
        out.extend_from_slice(&self.table_offset.to_le_bytes());
        out.extend_from_slice(&self.table_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let mut arr = [0u8; HEADER_LEN];
        arr.copy_from_slice(&out);
        arr
    }

    /// Decodes and checks magic and header checksum (not the version: the caller reports that).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, crate::FormatError> {
        if b[..8] != MAGIC {
            return Err(crate::FormatError::BadMagic);
        }
        let mut r = Le(&b[8..]);
        let h = Header {
            version: r.u16(),
            kind_code: r.u16(),
            sections: r.u32(),
            table_offset: r.u64(),
            table_crc: r.u32(),
        };
        let crc = r.u32();
        if crc != crc32c::crc32c(&b[..28]) {
            return Err(crate::FormatError::Checksum { what: "header".into() });
        }
        Ok(h)
    }
}

/// A little-endian cursor over a slice the caller has already bounds-checked.
pub(crate) struct Le<'a>(pub &'a [u8]);

impl Le<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.0[..N]);
        self.0 = &self.0[N..];
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    pub fn skip(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }
    pub fn array32(&mut self) -> [u8; 32] {
        self.take()
    }
}
