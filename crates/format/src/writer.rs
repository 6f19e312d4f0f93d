//! Writing a `.clip` file: encodes the node tree, span table and metadata into sections, deterministically
//! (the same [`IndexContents`] always gives the same bytes).

use std::io::{Read, Write};

use crate::layout::*;
use crate::spill::Spill;
use crate::tables::{encode_tables, TreeTables};
use crate::windows::{WindowRef, Windows};
use crate::{Chunks, FormatError, ImageMeta, NodeSpec};

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
    /// Inodes; element `i` is `Ino::from_index(i)`, element 0 the root directory. Ignored (and empty) when
    /// `tree` holds them already encoded.
    pub nodes: Vec<NodeSpec>,
    /// The inodes encoded as they were made (what the indexer gives for a merged tree), instead of `nodes`.
    pub tree: Option<TreeTables>,
    /// All layers' spans, each layer's slice as its [`crate::LayerMeta`] says.
    pub spans: Vec<SpanSpec>,
    /// The spans' checkpoint windows, stored (compressed) as they were recorded: the `WIND` section.
    pub windows: Windows,
    /// Digests of the layers' compressed chunks and of the windows: the lazy `CHNK` section (none: an
    /// index whose reads verify whole spans only).
    pub chunks: Option<Chunks>,
}

impl IndexContents {
    /// How many inodes the index holds.
    pub fn inodes(&self) -> usize {
        self.tree.as_ref().map_or(self.nodes.len(), TreeTables::len)
    }
}

/// zstd level for large metadata sections (and, in [`Windows`], for checkpoint windows): small output,
/// still fast for a 100k-file tree.
pub(crate) const ZSTD_LEVEL: i32 = 9;
/// zstd level for metadata sections up to [`STRONG_MAX`] raw bytes: ~10 % smaller than level 9 for a
/// 10k-file image (directory entries shrink by a quarter) for ~70 ms; level 19 saves 6 % more but costs
/// ~400 ms, a third of indexing such an image on a fast link.
const STRONG_LEVEL: i32 = 15;
const STRONG_MAX: usize = 2 << 20;

/// How hard [`write_container`] packs one eager section.
#[derive(Clone, Copy)]
pub(crate) enum Packing {
    /// [`STRONG_LEVEL`] up to [`STRONG_MAX`] raw bytes, then [`ZSTD_LEVEL`]: for an index's names and
    /// directory entries, which every mount downloads and which shrink by a quarter.
    Strong,
    /// [`ZSTD_LEVEL`].
    Fast,
}

/// One eager section for [`write_container`]: its id, raw bytes and packing.
pub(crate) type Eager<'a> = ([u8; 4], Raw<'a>, Packing);

/// Memory-bounding cap (log2) of the zstd match tables used for an eager section: whatever the section's
/// size, compressing it costs at most ~10 MiB (and the output buffer grows with the compressed bytes only).
pub(crate) const SECTION_TABLE_LOG: u32 = 20;
/// The same cap for the span table, which grows with the layers' size (a digest and offsets per span,
/// mostly incompressible): small enough that indexing a 20 GiB layer takes no more memory for it than a
/// 1 GiB one (a span table up to 64 KiB, ~1000 spans, compresses as it would without the cap).
const SPAN_TABLE_LOG: u32 = 16;

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

/// One eager section compressed with zstd at `level`, its match tables capped at 2^`table_log` entries.
/// The bytes are fed in pieces when spilled: zstd's streaming compressor gathers its input into whole
/// blocks, so the frame does not depend on the pieces.
pub(crate) fn compress_section(raw: Raw<'_>, level: i32, table_log: u32) -> Result<Vec<u8>, FormatError> {
    use zstd::zstd_safe::CParameter;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level).map_err(FormatError::Write)?;
    enc.set_pledged_src_size(Some(raw.len())).map_err(FormatError::Write)?;
    for p in [CParameter::WindowLog(table_log), CParameter::HashLog(table_log), CParameter::ChainLog(table_log)] {
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
    let owned;
    let tables = match &contents.tree {
        Some(tree) => tree,
        None => {
            owned = encode_tables(contents)?;
            &owned
        }
    };
    let meta = serde_json::to_vec(&contents.meta).map_err(FormatError::Meta)?;
    let spans = encode_spans(&contents.spans, &contents.windows)?;
    if let Some(chunks) = &contents.chunks {
        chunks.check(contents.spans.len())?;
    }
    let eager = vec![
        (SEC_META, Raw::Bytes(&meta), Packing::Strong),
        // Node records are fixed-size fields that level 15 packs no smaller than level 9 (the bench image's:
        // 60.3 KB at level 9, 60.4 KB at level 15, in 7 ms instead of 69 ms).
        (SEC_NODE, Raw::Spilled(&tables.nodes), Packing::Fast),
        (SEC_DENT, Raw::Spilled(&tables.dents), Packing::Strong),
        (SEC_STRS, Raw::Bytes(&tables.strs.blob), Packing::Strong),
        (SEC_XATR, Raw::Bytes(&tables.xattrs), Packing::Strong),
        (SEC_SPAN, Raw::Bytes(&spans), Packing::Strong),
    ];
    write_container(contents.kind, eager, &contents.windows, contents.chunks.as_ref(), data, out)
}

/// The `eager` sections compressed, in their order, two at a time (the largest first): an index is written
/// in about half the time (its names and directory entries, at level 15, take as long as all the rest), and
/// the two compressions' match tables (at most ~10 MiB each) are all the memory it takes.
fn compress_eager(eager: &[Eager<'_>]) -> Result<Vec<Vec<u8>>, FormatError> {
    let compress = |i: usize| {
        let (id, raw, packing) = eager[i];
        let strong = matches!(packing, Packing::Strong) && raw.len() <= STRONG_MAX as u64;
        let level = if strong { STRONG_LEVEL } else { ZSTD_LEVEL };
        let table_log = if id == SEC_SPAN { SPAN_TABLE_LOG } else { SECTION_TABLE_LOG };
        compress_section(raw, level, table_log)
    };
    let mut order: Vec<usize> = (0..eager.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(eager[i].1.len()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        while let Some(&i) = order.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            done.push((i, compress(i)));
        }
        done
    };
    let (mine, theirs) = std::thread::scope(|scope| {
        let other = scope.spawn(work);
        (work(), other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let mut stored: Vec<Option<Vec<u8>>> = vec![None; eager.len()];
    for (i, result) in mine.into_iter().chain(theirs) {
        stored[i] = Some(result?);
    }
    Ok(stored.into_iter().flatten().collect())
}

/// Writes header, section table, the `eager` sections (each one zstd frame), the windows as the lazy `WIND`
/// section, the chunk digests as the lazy `CHNK` section and, with `data`, the `DATA` section: the
/// container every `.clip` kind shares.
pub(crate) fn write_container<W: Write>(
    kind: ArchiveKind,
    eager: Vec<Eager<'_>>,
    windows: &Windows,
    chunks: Option<&Chunks>,
    data: Option<DataSource<'_>>,
    mut out: W,
) -> Result<u64, FormatError> {
    let chunks = chunks.map(Chunks::encode).transpose()?;
    let stored = compress_eager(&eager)?;
    let bodies: Vec<([u8; 4], u32, Vec<u8>, u64)> =
        eager.iter().zip(stored).map(|((id, raw, _), stored)| (*id, FLAG_ZSTD, stored, raw.len())).collect();

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

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
