//! Reading a `.clip` file ([`Archive`]): open checks the header, the section table and each eagerly loaded section's
//! checksum, and nothing more; nodes, entries and spans are decoded on access, with bounds checks, so a
//! 100k-file index opens in milliseconds and a corrupt one gives an error, never a panic. The file tree is
//! read in `tree`, the span table and windows in `spans`.

use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use crate::check::{check_header, check_sizes, check_table, decode_section, find};
use crate::error::Corruption;
use crate::layout::*;
use crate::{FormatError, ImageMeta, Ino, LayerIndex, NodeKind};

mod next;
mod spans;
mod startup;
mod tree;

pub use next::{Next, NextFiles, MAX_NEXT_EDGES};
pub use spans::{SpanSlice, SpanView};
pub use startup::MAX_STARTUP_FILES;
pub use tree::{NodeView, XattrRef};

/// Bytes of an eagerly loaded section: borrowed from the mapping, or decompressed at open.
enum Section {
    Mapped(Range<usize>),
    Owned(Vec<u8>),
}

/// Where the whole file's bytes are, when they are local.
enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
    /// Only the eagerly loaded sections were fetched (e.g. from S3); lazy sections are read by the caller.
    Remote,
}

/// An open `.clip` file.
pub struct Archive {
    backing: Backing,
    kind: ArchiveKind,
    sections: Vec<SectionEntry>,
    meta: ImageMeta,
    nodes: Section,
    dents: Section,
    strs: Section,
    xattrs: Section,
    spans: Section,
    /// The checked `CHNK` section's place and sums, once [`Archive::chunk_table`] looked.
    pub(crate) chunks: std::sync::OnceLock<Option<crate::chunks::CheckedChunks>>,
    /// The checked `NEXT` section, once [`Archive::next_files`] looked.
    next: std::sync::OnceLock<Option<NextFiles>>,
}

/// Reads byte ranges of a `.clip` file that is not local (S3, registry): used by [`Archive::load_remote`].
pub trait RangeReader {
    fn read_range(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, FormatError>;
}

impl Archive {
    /// Maps a local `.clip` file and checks its header and eager sections. Anything but a regular file is
    /// refused (see [`crate::open_regular`]).
    pub fn open(path: &Path) -> Result<Archive, FormatError> {
        let io = |source| FormatError::Io { path: path.to_path_buf(), source };
        let file = crate::open_regular(path).map_err(io)?;
        // SAFETY: the file is mapped read-only; clip never writes to an index after it is renamed into place,
        // and every access below is bounds-checked against the mapping's length.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mapped(map))
    }

    /// Reads a `.clip` file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Archive, FormatError> {
        Self::parse(Backing::Owned(bytes))
    }

    /// Loads only the header, section table and eager sections through `reader` (a few range reads); the
    /// lazy sections (windows, data) stay remote: see [`Archive::section`].
    pub fn load_remote(reader: &mut dyn RangeReader) -> Result<Archive, FormatError> {
        let (kind, sections) = Self::load_table(reader)?;
        if kind == ArchiveKind::LayerPart {
            return Err(FormatError::LayerPart);
        }
        let mut load = |id| -> Result<Section, FormatError> {
            let e = find(&sections, id)?;
            let stored = reader.read_range(e.offset, e.stored_len)?;
            if stored.len() as u64 != e.stored_len {
                return Err(FormatError::Truncated { what: e.name(), needed: e.stored_len, len: stored.len() as u64 });
            }
            Ok(Section::Owned(decode_section(e, &stored)?.unwrap_or(stored)))
        };
        let meta = load(SEC_META)?;
        let (nodes, dents, strs, xattrs, spans) =
            (load(SEC_NODE)?, load(SEC_DENT)?, load(SEC_STRS)?, load(SEC_XATR)?, load(SEC_SPAN)?);
        Self::finish(Backing::Remote, kind, sections, meta, [nodes, dents, strs, xattrs, spans])
    }

    /// Reads only the header and the section table through `reader` (two small range reads): enough to
    /// find a remote archive's data section or to compare its sections' checksums with another copy's.
    pub fn load_table(reader: &mut dyn RangeReader) -> Result<(ArchiveKind, Vec<SectionEntry>), FormatError> {
        let head = reader.read_range(0, HEADER_LEN as u64)?;
        let (header, kind) = check_header(&head, u64::MAX)?;
        let table_len = header.sections as u64 * SECTION_ENTRY_LEN as u64;
        let table = reader.read_range(header.table_offset, table_len)?;
        Ok((kind, check_table(&header, &table, u64::MAX)?))
    }

    fn parse(backing: Backing) -> Result<Archive, FormatError> {
        let buf: &[u8] = match &backing {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
            Backing::Remote => &[],
        };
        let len = buf.len() as u64;
        let (header, kind) = check_header(buf, len)?;
        if kind == ArchiveKind::LayerPart {
            return Err(FormatError::LayerPart);
        }
        let start = header.table_offset as usize;
        let table = &buf[start..start + header.sections as usize * SECTION_ENTRY_LEN];
        let sections = check_table(&header, table, len)?;
        let load = |id| -> Result<Section, FormatError> {
            let e = find(&sections, id)?;
            let range = e.offset as usize..(e.offset + e.stored_len) as usize;
            Ok(match decode_section(e, &buf[range.clone()])? {
                Some(raw) => Section::Owned(raw),
                None => Section::Mapped(range),
            })
        };
        let eager = [load(SEC_NODE)?, load(SEC_DENT)?, load(SEC_STRS)?, load(SEC_XATR)?, load(SEC_SPAN)?];
        let meta = load(SEC_META)?;
        Self::finish(backing, kind, sections, meta, eager)
    }

    fn finish(
        backing: Backing,
        kind: ArchiveKind,
        sections: Vec<SectionEntry>,
        meta: Section,
        [nodes, dents, strs, xattrs, spans]: [Section; 5],
    ) -> Result<Archive, FormatError> {
        let (chunks, next) = (std::sync::OnceLock::new(), std::sync::OnceLock::new());
        let mut a = Archive {
            backing,
            kind,
            sections,
            meta: ImageMeta::default(),
            nodes,
            dents,
            strs,
            xattrs,
            spans,
            chunks,
            next,
        };
        a.meta = serde_json::from_slice(a.bytes(&meta)).map_err(FormatError::Meta)?;
        for (section, sec, record) in [
            ("NODE", &a.nodes, NODE_LEN),
            ("DENT", &a.dents, DENT_LEN),
            ("XATR", &a.xattrs, XATTR_LEN),
            ("SPAN", &a.spans, SPAN_LEN),
        ] {
            let len = a.bytes(sec).len();
            if len % record != 0 {
                return Err(Corruption::PartialRecord { section, len, record }.into());
            }
        }
        let count = a.span_count();
        for (i, l) in a.meta.layers.iter().enumerate() {
            let (first, end) = (u64::from(l.first_span.0), u64::from(l.first_span.0) + u64::from(l.span_count));
            if end > count as u64 {
                return Err(Corruption::LayerSpans { layer: LayerIndex::from_index(i), first, end, count }.into());
            }
        }
        if a.node_count() == 0 || a.node(Ino::ROOT)?.kind() != NodeKind::Dir {
            return Err(Corruption::RootNotDir.into());
        }
        check_sizes(&a)?;
        Ok(a)
    }

    fn bytes<'a>(&'a self, s: &'a Section) -> &'a [u8] {
        match s {
            Section::Owned(v) => v,
            Section::Mapped(r) => match &self.backing {
                Backing::Mapped(m) => &m[r.clone()],
                Backing::Owned(v) => &v[r.clone()],
                Backing::Remote => &[],
            },
        }
    }

    /// Data-carrying (v1) or index-only (v2).
    pub fn kind(&self) -> ArchiveKind {
        self.kind
    }

    /// Source, config and layer table.
    pub fn meta(&self) -> &ImageMeta {
        &self.meta
    }

    /// The section table (for `inspect` and for reading lazy sections remotely).
    pub fn sections(&self) -> &[SectionEntry] {
        &self.sections
    }

    /// The table entry of section `id`, if present.
    pub fn section(&self, id: [u8; 4]) -> Option<&SectionEntry> {
        self.sections.iter().find(|s| s.id == id)
    }

    /// Bytes of the local file (not available for remotely loaded archives).
    pub fn local_range(&self, r: Range<u64>) -> Result<&[u8], FormatError> {
        let buf: &[u8] = match &self.backing {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
            Backing::Remote => return Err(FormatError::NotLocal { start: r.start, end: r.end }),
        };
        let len = buf.len() as u64;
        if r.end > len || r.start > r.end {
            return Err(FormatError::Truncated { what: format!("range {}..{}", r.start, r.end), needed: r.end, len });
        }
        Ok(&buf[r.start as usize..r.end as usize])
    }

    /// Size of the eagerly loaded part (what a mount keeps), as stored.
    pub fn mounted_size(&self) -> u64 {
        let eager: u64 = self.sections.iter().filter(|s| s.flags & FLAG_LAZY == 0).map(|s| s.stored_len).sum();
        eager + (HEADER_LEN + self.sections.len() * SECTION_ENTRY_LEN) as u64
    }
}
