//! Reading a `.clip` file: open checks the header, the section table and each eagerly loaded section's
//! checksum, and nothing more; nodes, entries and spans are decoded on access, with bounds checks, so a
//! 100k-file index opens in milliseconds and a corrupt one gives an error, never a panic.

use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use crate::check::{check_header, check_sizes, check_table, decode_section, find};
use crate::layout::*;
use crate::{DataRef, FormatError, ImageMeta, Ino, NodeKind, Timestamp};

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
}

/// One inode's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    pub ino: Ino,
    /// Full `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: Timestamp,
    /// Regular files: the layer holding the data.
    pub layer: u32,
    /// Regular files: bytes; symlinks: target length; others 0.
    pub size: u64,
    data: u64,
    extra: u32,
    xattr_first: u32,
    xattr_count: u32,
    /// The directory holding this inode's first name (the root is its own parent).
    pub parent: Ino,
}

impl NodeView {
    /// The file type; records with an unknown type are refused when read, so this is always known.
    pub fn kind(&self) -> NodeKind {
        NodeKind::from_mode(self.mode).unwrap_or(NodeKind::File)
    }

    /// Where a regular file's bytes are.
    pub fn data_ref(&self) -> Option<DataRef> {
        (self.kind() == NodeKind::File).then_some(DataRef { layer: self.layer, offset: self.data, size: self.size })
    }

    /// Device numbers of a char/block device, `(major, minor)`.
    pub fn rdev(&self) -> (u32, u32) {
        match self.kind() {
            NodeKind::CharDevice | NodeKind::BlockDevice => ((self.data >> 32) as u32, self.data as u32),
            _ => (0, 0),
        }
    }

    /// Number of entries of a directory.
    pub fn child_count(&self) -> u32 {
        if self.kind() == NodeKind::Dir {
            self.extra
        } else {
            0
        }
    }
}

/// An extended attribute borrowed from the archive: `(name, value)`.
pub type XattrRef<'a> = (&'a [u8], &'a [u8]);

/// One span record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanView {
    pub out_offset: u64,
    pub in_offset: u64,
    pub bits: u8,
    pub digest: [u8; 32],
    /// Offset of the compressed window inside the `WIND` section, and its length (0 = no window).
    pub window_off: u64,
    pub window_len: u32,
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
        let mut a = Archive { backing, kind, sections, meta: ImageMeta::default(), nodes, dents, strs, xattrs, spans };
        a.meta = serde_json::from_slice(a.bytes(&meta)).map_err(FormatError::Meta)?;
        for (name, sec, rec) in [
            ("NODE", &a.nodes, NODE_LEN),
            ("DENT", &a.dents, DENT_LEN),
            ("XATR", &a.xattrs, XATTR_LEN),
            ("SPAN", &a.spans, SPAN_LEN),
        ] {
            if a.bytes(sec).len() % rec != 0 {
                return Err(FormatError::corrupt(format!("section {name} is not a whole number of records")));
            }
        }
        let span_total = a.span_count();
        for (i, l) in a.meta.layers.iter().enumerate() {
            if u64::from(l.first_span) + u64::from(l.span_count) > span_total as u64 {
                return Err(FormatError::corrupt(format!("layer {i} names spans beyond the span table")));
            }
        }
        if a.node_count() == 0 || a.node(Ino::ROOT)?.kind() != NodeKind::Dir {
            return Err(FormatError::corrupt("the root inode is not a directory"));
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

    /// Number of inodes.
    pub fn node_count(&self) -> usize {
        self.bytes(&self.nodes).len() / NODE_LEN
    }

    /// The record of `ino`.
    pub fn node(&self, ino: Ino) -> Result<NodeView, FormatError> {
        let nodes = self.bytes(&self.nodes);
        let i = ino.index();
        if ino.0 == 0 || i >= nodes.len() / NODE_LEN {
            return Err(FormatError::corrupt(format!("inode {ino} out of range")));
        }
        let mut r = Le(&nodes[i * NODE_LEN..(i + 1) * NODE_LEN]);
        let v = NodeView {
            ino,
            mode: r.u32(),
            uid: r.u32(),
            gid: r.u32(),
            nlink: r.u32(),
            mtime: Timestamp { sec: r.i64(), nsec: r.u32() },
            layer: r.u32(),
            size: r.u64(),
            data: r.u64(),
            extra: r.u32(),
            xattr_first: r.u32(),
            xattr_count: r.u32(),
            parent: Ino(r.u32()),
        };
        if NodeKind::from_mode(v.mode).is_none() {
            return Err(FormatError::corrupt(format!("inode {ino} has mode {:o} with no file type", v.mode)));
        }
        Ok(v)
    }

    fn string(&self, off: u32, len: u32) -> Result<&[u8], FormatError> {
        let strs = self.bytes(&self.strs);
        let (start, end) = (off as usize, off as usize + len as usize);
        strs.get(start..end).ok_or_else(|| FormatError::corrupt(format!("string {off}+{len} out of range")))
    }

    /// Entry `index` (0-based, sorted by name) of directory `dir`.
    pub fn dirent(&self, dir: &NodeView, index: u32) -> Result<(&[u8], Ino), FormatError> {
        if index >= dir.child_count() {
            return Err(FormatError::corrupt(format!("entry {index} of inode {} out of range", dir.ino)));
        }
        let dents = self.bytes(&self.dents);
        let rec = usize::try_from(dir.data)
            .ok()
            .and_then(|first| first.checked_add(index as usize))
            .and_then(|k| dents.get(k.checked_mul(DENT_LEN)?..k.checked_add(1)?.checked_mul(DENT_LEN)?))
            .ok_or_else(|| FormatError::corrupt(format!("entries of inode {} out of range", dir.ino)))?;
        let mut r = Le(rec);
        let (off, len, ino) = (r.u32(), r.u32(), r.u32());
        Ok((self.string(off, len)?, Ino(ino)))
    }

    /// The entries of a directory in name order.
    pub fn children<'a>(&'a self, dir: &NodeView) -> impl Iterator<Item = Result<(&'a [u8], Ino), FormatError>> + 'a {
        let dir = *dir;
        (0..dir.child_count()).map(move |i| self.dirent(&dir, i))
    }

    /// Looks `name` up in directory `dir` (binary search over its sorted entries).
    pub fn lookup(&self, dir: &NodeView, name: &[u8]) -> Result<Option<Ino>, FormatError> {
        let (mut lo, mut hi) = (0u32, dir.child_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (n, ino) = self.dirent(dir, mid)?;
            match n.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(ino)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Resolves a `/`-separated path from the root without following symlinks (`""` and `"/"` are the root).
    pub fn resolve(&self, path: &[u8]) -> Result<Option<Ino>, FormatError> {
        let mut cur = self.node(Ino::ROOT)?;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            if cur.kind() != NodeKind::Dir {
                return Ok(None);
            }
            let next = if comp == b".." { Some(cur.parent) } else { self.lookup(&cur, comp)? };
            match next {
                Some(ino) => cur = self.node(ino)?,
                None => return Ok(None),
            }
        }
        Ok(Some(cur.ino))
    }

    /// A symlink's target.
    pub fn symlink_target(&self, node: &NodeView) -> Result<&[u8], FormatError> {
        if node.kind() != NodeKind::Symlink {
            return Err(FormatError::corrupt(format!("inode {} is not a symlink", node.ino)));
        }
        let off = u32::try_from(node.data).map_err(|_| FormatError::corrupt("symlink target offset"))?;
        self.string(off, node.extra)
    }

    /// Extended attributes of an inode, sorted by name.
    pub fn xattrs(&self, node: &NodeView) -> Result<Vec<XattrRef<'_>>, FormatError> {
        let table = self.bytes(&self.xattrs);
        let (first, count) = (node.xattr_first as usize, node.xattr_count as usize);
        let recs = table
            .get(first * XATTR_LEN..(first + count) * XATTR_LEN)
            .ok_or_else(|| FormatError::corrupt(format!("xattrs of inode {} out of range", node.ino)))?;
        recs.chunks_exact(XATTR_LEN)
            .map(|rec| {
                let mut r = Le(rec);
                let (no, nl, vo, vl) = (r.u32(), r.u32(), r.u32(), r.u32());
                Ok((self.string(no, nl)?, self.string(vo, vl)?))
            })
            .collect()
    }

    /// Total number of span records (all layers).
    pub fn span_count(&self) -> usize {
        self.bytes(&self.spans).len() / SPAN_LEN
    }

    /// Span record `index` of the whole table.
    pub fn span(&self, index: usize) -> Result<SpanView, FormatError> {
        let rec = index
            .checked_add(1)
            .and_then(|end| self.bytes(&self.spans).get(index * SPAN_LEN..end.checked_mul(SPAN_LEN)?))
            .ok_or_else(|| FormatError::corrupt(format!("span {index} out of range")))?;
        let mut r = Le(rec);
        let (out_offset, in_offset, window_off, window_len, bits) = (r.u64(), r.u64(), r.u64(), r.u32(), r.u8());
        r.skip(3);
        Ok(SpanView { out_offset, in_offset, bits, digest: r.array32(), window_off, window_len })
    }

    /// The span-table indexes of layer `layer`.
    pub fn layer_spans(&self, layer: u32) -> Result<Range<usize>, FormatError> {
        let l = self
            .meta
            .layers
            .get(layer as usize)
            .ok_or_else(|| FormatError::corrupt(format!("layer {layer} out of range")))?;
        Ok(l.first_span as usize..l.first_span as usize + l.span_count as usize)
    }

    /// The span of `layer` holding uncompressed `offset` (binary search), as an index of the whole table.
    pub fn find_span(&self, layer: u32, offset: u64) -> Result<usize, FormatError> {
        let range = self.layer_spans(layer)?;
        let (mut lo, mut hi) = (range.start, range.end);
        if lo == hi {
            return Err(FormatError::corrupt(format!("layer {layer} has no spans")));
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.span(mid)?.out_offset <= offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Uncompressed range `[start, end)` covered by span `index` of `layer`.
    pub fn span_range(&self, layer: u32, index: usize) -> Result<Range<u64>, FormatError> {
        let range = self.layer_spans(layer)?;
        let start = self.span(index)?.out_offset;
        let end = if index + 1 < range.end {
            self.span(index + 1)?.out_offset
        } else {
            self.meta.layers[layer as usize].uncompressed_size
        };
        if end < start {
            return Err(FormatError::corrupt(format!("span {index} ends before it starts")));
        }
        Ok(start..end)
    }

    /// Absolute file range of span `index`'s compressed window (None when it has none).
    pub fn window_location(&self, index: usize) -> Result<Option<Range<u64>>, FormatError> {
        let s = self.span(index)?;
        if s.window_len == 0 {
            return Ok(None);
        }
        let wind = self.section(SEC_WIND).ok_or(FormatError::MissingSection("WIND"))?;
        let end = s.window_off.checked_add(u64::from(s.window_len)).filter(|&end| end <= wind.stored_len);
        let Some(end) = end else {
            return Err(FormatError::corrupt(format!("window of span {index} out of range")));
        };
        Ok(Some(wind.offset + s.window_off..wind.offset + end))
    }

    /// Decompresses a window fetched from [`Archive::window_location`].
    pub fn decode_window(compressed: &[u8]) -> Result<Vec<u8>, FormatError> {
        let w =
            zstd::bulk::decompress(compressed, 32 * 1024).map_err(|e| FormatError::corrupt(format!("window: {e}")))?;
        Ok(w)
    }

    /// The window of span `index` from the local file (empty when it has none).
    pub fn window(&self, index: usize) -> Result<Vec<u8>, FormatError> {
        match self.window_location(index)? {
            None => Ok(Vec::new()),
            Some(r) => Self::decode_window(self.local_range(r)?),
        }
    }

    /// Bytes of the local file (not available for remotely loaded archives).
    pub fn local_range(&self, r: Range<u64>) -> Result<&[u8], FormatError> {
        let buf: &[u8] = match &self.backing {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
            Backing::Remote => {
                return Err(FormatError::corrupt("archive was loaded remotely; read the range remotely"))
            }
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
