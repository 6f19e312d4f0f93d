//! Writing a `.clip` file: encodes the node tree, span table and metadata into sections, deterministically
//! (the same [`IndexContents`] always gives the same bytes).

use std::hash::BuildHasher;
use std::io::{Read, Write};

use crate::layout::*;
use crate::spill::Spill;
use crate::windows::{WindowRef, Windows};
use crate::{Chunks, Content, FormatError, ImageMeta, Ino, NodeKind, NodeSpec, Xattr};

/// A resume point in a layer and the digest of the span that starts there, as the indexer records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSpec {
    /// Uncompressed offset where the span starts.
    pub out_offset: u64,
    /// Compressed offset of the first byte the decoder needs.
    pub in_offset: u64,
    /// gzip: unused bits of the byte before `in_offset` (0..=7); otherwise 0.
    pub bits: u8,
    /// sha256 of the span's uncompressed bytes.
    pub digest: crate::Digest,
    /// gzip: where in [`IndexContents::windows`] the stored window sits (up to 32 KiB of uncompressed
    /// output before `out_offset`; none at a stream start); else `WindowRef::default()` (no window).
    pub window: WindowRef,
}

/// Everything a `.clip` file holds apart from v1 file data.
#[derive(Debug, Clone)]
pub struct IndexContents {
    pub kind: ArchiveKind,
    pub meta: ImageMeta,
    /// Inodes; element `i` is `Ino::from_index(i)`, element 0 the root directory.
    pub nodes: Vec<NodeSpec>,
    /// All layers' spans, each layer's slice as its [`crate::LayerMeta`] says.
    pub spans: Vec<SpanSpec>,
    /// The spans' checkpoint windows, stored (compressed) as they were recorded: the `WIND` section.
    pub windows: Windows,
    /// Digests of the layers' compressed chunks and of the windows: the lazy `CHNK` section (none: an
    /// index whose reads verify whole spans only).
    pub chunks: Option<Chunks>,
}

/// zstd level for large metadata sections (and, in [`Windows`], for checkpoint windows): small output,
/// still fast for a 100k-file tree.
pub(crate) const ZSTD_LEVEL: i32 = 9;
/// zstd level for metadata sections up to [`STRONG_MAX`] raw bytes: ~10 % smaller than level 9 for a
/// 10k-file image (directory entries shrink by a quarter) for ~70 ms; level 19 saves 6 % more but costs
/// ~400 ms, a third of indexing such an image on a fast link.
const STRONG_LEVEL: i32 = 15;
const STRONG_MAX: usize = 2 << 20;

/// Memory-bounding cap (log2) of the zstd match tables used for an eager section: whatever the section's
/// size, compressing it costs at most ~10 MiB (and the output buffer grows with the compressed bytes only).
const SECTION_TABLE_LOG: u32 = 20;

/// The raw bytes of an eager section: in memory, or gathered in a [`Spill`] (which may be in a temporary file).
#[derive(Clone, Copy)]
pub(crate) enum Raw<'a> {
    Bytes(&'a [u8]),
    Spilled(&'a Spill),
}

impl Raw<'_> {
    fn len(&self) -> u64 {
        match self {
            Raw::Bytes(b) => b.len() as u64,
            Raw::Spilled(s) => s.len(),
        }
    }
}

/// One eager section compressed with zstd at `level`. The bytes are fed in pieces when spilled: zstd's
/// streaming compressor gathers its input into whole blocks, so the frame does not depend on the pieces.
pub(crate) fn compress_section(raw: Raw<'_>, level: i32) -> Result<Vec<u8>, FormatError> {
    use zstd::zstd_safe::CParameter;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level).map_err(FormatError::Write)?;
    enc.set_pledged_src_size(Some(raw.len())).map_err(FormatError::Write)?;
    for p in [
        CParameter::WindowLog(SECTION_TABLE_LOG),
        CParameter::HashLog(SECTION_TABLE_LOG),
        CParameter::ChainLog(SECTION_TABLE_LOG),
    ] {
        enc.set_parameter(p).map_err(FormatError::Write)?;
    }
    enc.include_contentsize(true).map_err(FormatError::Write)?;
    match raw {
        Raw::Bytes(b) => enc.write_all(b).map_err(FormatError::Write)?,
        Raw::Spilled(s) => s.for_each_chunk(|chunk| enc.write_all(chunk).map_err(FormatError::Write))?,
    }
    enc.finish().map_err(FormatError::Write)
}

/// Writes an index-only archive (or a data-carrying archive without data yet) to `out`; returns bytes written.
pub fn write_index<W: Write>(contents: &IndexContents, out: W) -> Result<u64, FormatError> {
    write_archive(contents, None, out)
}

/// The data section of a data-carrying archive: `len` bytes read from `reader`.
pub struct DataSource<'a> {
    pub reader: &'a mut dyn Read,
    pub len: u64,
}

/// Writes a `.clip` file; with `data`, its bytes become the `DATA` section (streamed, never held in memory).
pub fn write_archive<W: Write>(
    contents: &IndexContents,
    data: Option<DataSource<'_>>,
    out: W,
) -> Result<u64, FormatError> {
    let tables = encode_tables(contents)?;
    let meta = serde_json::to_vec(&contents.meta).map_err(FormatError::Meta)?;
    let spans = encode_spans(&contents.spans, &contents.windows)?;
    if let Some(chunks) = &contents.chunks {
        let sizes: Vec<u64> = contents.meta.layers.iter().map(|l| l.size).collect();
        chunks.check(&sizes, contents.spans.len())?;
    }
    let eager = vec![
        (SEC_META, Raw::Bytes(&meta)),
        (SEC_NODE, Raw::Spilled(&tables.nodes)),
        (SEC_DENT, Raw::Spilled(&tables.dents)),
        (SEC_STRS, Raw::Bytes(&tables.strs)),
        (SEC_XATR, Raw::Bytes(&tables.xattrs)),
        (SEC_SPAN, Raw::Bytes(&spans)),
    ];
    write_container(contents.kind, eager, &contents.windows, contents.chunks.as_ref(), data, out)
}

/// Writes header, section table, the `eager` sections (each one zstd frame), the windows as the lazy `WIND`
/// section, the chunk digests as the lazy `CHNK` section and, with `data`, the `DATA` section: the
/// container every `.clip` kind shares.
pub(crate) fn write_container<W: Write>(
    kind: ArchiveKind,
    eager: Vec<([u8; 4], Raw<'_>)>,
    windows: &Windows,
    chunks: Option<&Chunks>,
    data: Option<DataSource<'_>>,
    mut out: W,
) -> Result<u64, FormatError> {
    let chunks = chunks.map(Chunks::encode).transpose()?;
    let mut bodies: Vec<([u8; 4], u32, Vec<u8>, u64)> = Vec::new();
    for (id, raw) in eager {
        let raw_len = raw.len();
        let level = if raw_len <= STRONG_MAX as u64 { STRONG_LEVEL } else { ZSTD_LEVEL };
        let stored = compress_section(raw, level)?;
        bodies.push((id, FLAG_ZSTD, stored, raw_len));
    }

    let count = bodies.len() + 1 + usize::from(chunks.is_some()) + usize::from(data.is_some());
    let mut offset = (HEADER_LEN + count * SECTION_ENTRY_LEN) as u64;
    let mut table = Vec::with_capacity(count * SECTION_ENTRY_LEN);
    for (id, flags, stored, raw_len) in &bodies {
        SectionEntry {
            id: *id,
            flags: *flags,
            offset,
            stored_len: stored.len() as u64,
            raw_len: *raw_len,
            crc: crc32c::crc32c(stored),
        }
        .encode(&mut table);
        offset += stored.len() as u64;
    }
    // WIND is written from where the windows were stored (possibly a temporary file), never held here.
    SectionEntry {
        id: SEC_WIND,
        flags: FLAG_LAZY,
        offset,
        stored_len: windows.len(),
        raw_len: windows.len(),
        crc: windows.crc(),
    }
    .encode(&mut table);
    offset += windows.len();
    if let Some(chunks) = &chunks {
        let len = chunks.len() as u64;
        SectionEntry {
            id: SEC_CHNK,
            flags: FLAG_LAZY,
            offset,
            stored_len: len,
            raw_len: len,
            crc: crc32c::crc32c(chunks),
        }
        .encode(&mut table);
        offset += len;
    }
    if let Some(d) = &data {
        // The data section is verified span by span (digests in SPAN), not as a whole.
        SectionEntry { id: SEC_DATA, flags: FLAG_LAZY, offset, stored_len: d.len, raw_len: d.len, crc: 0 }
            .encode(&mut table);
    }
    let header = Header {
        version: FORMAT_VERSION,
        kind_code: kind.code(),
        sections: count as u32,
        table_offset: HEADER_LEN as u64,
        table_crc: crc32c::crc32c(&table),
    };
    let w = |out: &mut W, b: &[u8]| out.write_all(b).map_err(FormatError::Write);
    w(&mut out, &header.encode())?;
    w(&mut out, &table)?;
    let mut total = (HEADER_LEN + table.len()) as u64;
    for (_, _, stored, _) in &bodies {
        w(&mut out, stored)?;
        total += stored.len() as u64;
    }
    windows.write_to(&mut out)?;
    total += windows.len();
    if let Some(chunks) = &chunks {
        w(&mut out, chunks)?;
        total += chunks.len() as u64;
    }
    debug_assert_eq!(total, offset);
    if let Some(d) = data {
        let copied = std::io::copy(&mut d.reader.take(d.len), &mut out).map_err(FormatError::Write)?;
        if copied != d.len {
            return Err(FormatError::Write(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("data section: expected {} bytes, source gave {copied}", d.len),
            )));
        }
        total += copied;
    }
    out.flush().map_err(FormatError::Write)?;
    Ok(total)
}

/// Raw bytes gathered in memory before a table moves to a temporary file.
pub(crate) const TABLE_SPILL_AT: usize = 4 << 20;

struct Tables {
    /// `NODE` and `DENT` grow with the image: gathered in [`Spill`]s.
    nodes: Spill,
    dents: Spill,
    strs: Vec<u8>,
    xattrs: Vec<u8>,
}

/// Interns byte strings into the `STRS` blob, each distinct string once. The strings are found again by
/// hashing their bytes in the blob, so interning costs ~10 bytes a string beside the blob, not a copy of each.
#[derive(Default)]
pub(crate) struct Strings {
    pub(crate) blob: Vec<u8>,
    /// `(offset, len)` in `blob` of every distinct string.
    seen: hashbrown::HashTable<(u32, u32)>,
    hasher: std::collections::hash_map::RandomState,
}

impl Strings {
    /// The strings of a `STRS` blob read back; strings added later are interned among themselves only.
    pub(crate) fn from_blob(blob: Vec<u8>) -> Strings {
        Strings { blob, ..Strings::default() }
    }

    pub(crate) fn add(&mut self, s: &[u8]) -> Result<(u32, u32), FormatError> {
        let len = u32::try_from(s.len()).map_err(|_| FormatError::Invalid("string over 4 GiB".into()))?;
        let Strings { blob, seen, hasher } = self;
        let at = |(off, len): (u32, u32)| off as usize..off as usize + len as usize;
        let hash = hasher.hash_one(s);
        if let Some(&(off, _)) = seen.find(hash, |&e| &blob[at(e)] == s) {
            return Ok((off, len));
        }
        let off = u32::try_from(blob.len()).map_err(|_| FormatError::Invalid("string table over 4 GiB".into()))?;
        blob.extend_from_slice(s);
        seen.insert_unique(hash, (off, len), |&e| hasher.hash_one(&blob[at(e)]));
        Ok((off, len))
    }
}

fn encode_tables(c: &IndexContents) -> Result<Tables, FormatError> {
    let n = c.nodes.len();
    if n == 0 || !matches!(c.nodes[0].content, Content::Dir(_)) {
        return Err(FormatError::Invalid("node 0 (the root) must be a directory".into()));
    }
    if n > u32::MAX as usize - 1 {
        return Err(FormatError::Invalid("too many nodes".into()));
    }
    // Links and parents, from the directory entries.
    let mut links = vec![0u32; n];
    let mut parent = vec![0u32; n];
    parent[0] = Ino::ROOT.0;
    for (i, node) in c.nodes.iter().enumerate() {
        let Content::Dir(children) = &node.content else { continue };
        for (name, ino) in children {
            let k = ino.index();
            if ino.0 == 0 || k >= n || k == 0 {
                return Err(FormatError::Invalid(format!("entry {:?} names bad inode {ino}", lossy(name))));
            }
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                return Err(FormatError::Invalid(format!("bad entry name {:?}", lossy(name))));
            }
            if matches!(c.nodes[k].content, Content::Dir(_)) {
                links[i] += 1; // the child's ".."
                if parent[k] != 0 {
                    return Err(FormatError::Invalid(format!("directory inode {ino} has two parents")));
                }
            } else {
                links[k] += 1; // one more name of a (possibly hard-linked) non-directory
            }
            if parent[k] == 0 {
                parent[k] = Ino::from_index(i).0;
            }
        }
    }
    if let Some(orphan) = (1..n).find(|&k| parent[k] == 0) {
        return Err(FormatError::Invalid(format!("inode {} is in no directory", Ino::from_index(orphan))));
    }

    let mut strs = Strings::default();
    let mut nodes = Spill::new(TABLE_SPILL_AT);
    let mut dents = Spill::new(TABLE_SPILL_AT);
    let mut xattrs = Vec::new();
    let mut dent_count: u32 = 0;
    let mut xattr_count: u32 = 0;
    for (i, node) in c.nodes.iter().enumerate() {
        let kind = NodeKind::from_mode(node.mode)
            .ok_or_else(|| FormatError::Invalid(format!("inode {}: mode {:o} has no file type", i + 1, node.mode)))?;
        let (layer, size, data, extra) = match (&node.content, kind) {
            (Content::File(r), NodeKind::File) => (r.layer.0, r.size, r.offset, 0),
            (Content::Dir(children), NodeKind::Dir) => {
                let mut sorted: Vec<&(Vec<u8>, Ino)> = children.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(FormatError::Invalid(format!("duplicate entry {:?}", lossy(&w[0].0))));
                }
                let first = dent_count;
                for (name, ino) in sorted {
                    let (off, len) = strs.add(name)?;
                    let mut rec = [0u8; DENT_LEN];
                    for (at, v) in [off, len, ino.0].into_iter().enumerate() {
                        rec[at * 4..at * 4 + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    dents.append(&rec).map_err(FormatError::Write)?;
                    dent_count += 1;
                }
                (0, 0, u64::from(first), children.len() as u32)
            }
            (Content::Symlink(target), NodeKind::Symlink) => {
                let (off, len) = strs.add(target)?;
                (0, u64::from(len), u64::from(off), len)
            }
            (Content::Device { major, minor }, NodeKind::CharDevice | NodeKind::BlockDevice) => {
                (0, 0, (u64::from(*major) << 32) | u64::from(*minor), 0)
            }
            (Content::Special, NodeKind::Fifo | NodeKind::Socket) => (0, 0, 0, 0),
            (_, kind) => {
                return Err(FormatError::Invalid(format!("inode {}: content does not match kind {kind:?}", i + 1)))
            }
        };
        let x_first = xattr_count;
        let x_count = encode_xattrs(&node.xattrs, &mut strs, &mut xattrs)?;
        xattr_count += x_count;
        let nlink = match kind {
            NodeKind::Dir => links[i] + 2,
            _ => links[i].max(1),
        };
        let mut rec = Vec::with_capacity(NODE_LEN);
        rec.extend_from_slice(&node.mode.to_le_bytes());
        rec.extend_from_slice(&node.uid.to_le_bytes());
        rec.extend_from_slice(&node.gid.to_le_bytes());
        rec.extend_from_slice(&nlink.to_le_bytes());
        rec.extend_from_slice(&node.mtime.sec.to_le_bytes());
        rec.extend_from_slice(&node.mtime.nsec.to_le_bytes());
        rec.extend_from_slice(&layer.to_le_bytes());
        rec.extend_from_slice(&size.to_le_bytes());
        rec.extend_from_slice(&data.to_le_bytes());
        rec.extend_from_slice(&extra.to_le_bytes());
        rec.extend_from_slice(&x_first.to_le_bytes());
        rec.extend_from_slice(&x_count.to_le_bytes());
        rec.extend_from_slice(&parent[i].to_le_bytes());
        nodes.append(&rec).map_err(FormatError::Write)?;
    }
    Ok(Tables { nodes, dents, strs: strs.blob, xattrs })
}

pub(crate) fn encode_spans(spans: &[SpanSpec], windows: &Windows) -> Result<Vec<u8>, FormatError> {
    let mut table = Vec::with_capacity(spans.len() * SPAN_LEN);
    for s in spans {
        let WindowRef { offset: woff, len: wlen } = s.window;
        if s.bits > 7 || woff.checked_add(u64::from(wlen)).is_none_or(|end| end > windows.len()) {
            return Err(FormatError::Invalid(format!("span at {}: window or bits out of range", s.out_offset)));
        }
        let woff = if wlen == 0 { 0 } else { woff };
        table.extend_from_slice(&s.out_offset.to_le_bytes());
        table.extend_from_slice(&s.in_offset.to_le_bytes());
        table.extend_from_slice(&woff.to_le_bytes());
        table.extend_from_slice(&wlen.to_le_bytes());
        table.extend_from_slice(&[s.bits, 0, 0, 0]);
        table.extend_from_slice(s.digest.as_bytes());
    }
    Ok(table)
}

/// Appends `XATR` records for `xattrs`, sorted by name; returns how many.
pub(crate) fn encode_xattrs(xattrs: &[Xattr], strs: &mut Strings, out: &mut Vec<u8>) -> Result<u32, FormatError> {
    let mut sorted: Vec<_> = xattrs.iter().collect();
    sorted.sort();
    for x in &sorted {
        let (no, nl) = strs.add(&x.name)?;
        let (vo, vl) = strs.add(&x.value)?;
        for v in [no, nl, vo, vl] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(sorted.len() as u32)
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
