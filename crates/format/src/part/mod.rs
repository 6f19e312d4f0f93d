//! Layer parts: the index of one layer on its own. A part depends on nothing but the layer's bytes and the
//! span size — its tar entries in stream order (whiteouts and opaque markers kept as entries, with their data
//! offsets), its spans with their checkpoint windows and digests, and the layer's facts — so it is
//! content-addressed ([`part_key`]: layer digest + span size + [`PART_VERSION`]), deterministic, and reusable
//! by every image that has the layer. An image index is merged from its layers' parts.
//!
//! On disk a part is a `.clip` container of kind [`ArchiveKind::LayerPart`]: `META` (JSON [`PartMeta`]),
//! `ENTR` (one [`ENTRY_LEN`]-byte record an entry), `STRS`, `XATR`, `SPAN` (as in an image index), the lazy
//! `WIND` and (from part version 2; its layout as now, cut per span, from version 4) the lazy `CHNK` ([`Chunks`]:
//! the layer's compressed-chunk digests); from version 7 `LOAD` when the layer has CPython bytecode, ELF files
//! or scripts ([`PartLoads`]: what each module imports, what each shared object or program names, what runs
//! each script).

mod entries;
mod entry;
mod loads;

use std::io::Write;
use std::path::Path;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::check::{check_header, check_table, decode_section, find};
use crate::layout::*;
use crate::writer::{encode_spans, write_container, Packing, Raw};
use crate::{ArchiveKind, Chunks, Compression, Corruption, Digest, FormatError, SpanSpec, WindowRef, Windows};
pub use entries::{IntoIter as PartEntriesIntoIter, PartEntries};
pub use entry::{EntryKind, TarEntry};
pub use loads::{
    ElfNames, LoaderCache, ModuleImport, ModuleImports, PartLoads, ScriptLine, MAX_LAYER_MODULES, MAX_MODULE_IMPORTS,
    MAX_SCRIPT_LINE,
};

/// Version of the part layout; part of every [`part_key`], so a clip with another layout never reads it.
/// Version 2 added the `CHNK` section; version 5 cut 64 KiB chunks and long spans over documentation;
/// version 6 cuts 32 KiB chunks (a part of version 5 would merge into an index without chunk digests);
/// version 7 records what CPython modules import and what shared objects load (`LOAD`); version 8 also what
/// programs load and the `#!` lines of scripts; version 9 a tree root per span in `CHNK`.
pub const PART_VERSION: u32 = 9;

/// The name a part is kept under: `sha256-<hex>-s<span size>-v<PART_VERSION>`, safe as a file name and as an
/// object key.
pub fn part_key(layer_digest: &Digest, span_size: u64) -> String {
    format!("{}-s{span_size}-v{PART_VERSION}", layer_digest.dashed())
}

/// The keys of the parts an image index with `meta` is merged from, one per layer in order.
pub fn index_part_keys(meta: &crate::ImageMeta) -> Vec<String> {
    meta.layers.iter().map(|l| part_key(&l.digest, meta.span_size)).collect()
}

/// What a part records about its layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub compression: Compression,
    /// Uncompressed bytes per span the part was built with.
    pub span_size: u64,
}

/// One layer's index. `spans[i].window` refers to `windows`.
#[derive(Debug, Clone)]
pub struct LayerPart {
    pub meta: PartMeta,
    pub entries: PartEntries,
    pub spans: Vec<SpanSpec>,
    pub windows: Windows,
    /// The layer's compressed-chunk digests and its spans' window digests (none in a part written
    /// without them: its spans are then only verified whole).
    pub chunks: Option<Chunks>,
    /// What the layer's CPython modules import and its shared objects load.
    pub loads: PartLoads,
}

impl LayerPart {
    /// The key this part is kept under.
    pub fn key(&self) -> String {
        part_key(&self.meta.digest, self.meta.span_size)
    }

    /// Writes the part (deterministically: the same part always gives the same bytes); returns bytes written.
    pub fn write<W: Write>(&self, out: W) -> Result<u64, FormatError> {
        let meta = serde_json::to_vec(&self.meta).map_err(FormatError::Meta)?;
        let spans = encode_spans(&self.spans, &self.windows)?;
        if let Some(chunks) = &self.chunks {
            chunks.check(self.spans.len())?;
        }
        let e = &self.entries;
        let modules = if self.loads.is_empty() { None } else { Some(loads::encode(&self.loads)?) };
        // Every section at the fast level: a part is written by every indexing run that reads its layer (the
        // last layer's right before the merge), and a Debian layer's entries and names come out as small as
        // at level 15 (within 2 %) in a fifth of the time (~30 ms instead of ~150 ms for the bench image's
        // largest layer).
        let mut eager = vec![
            (SEC_META, Raw::Bytes(&meta), Packing::Fast),
            (SEC_ENTR, Raw::Spilled(&e.records), Packing::Fast),
            (SEC_STRS, Raw::Bytes(&e.strs.blob), Packing::Fast),
            (SEC_XATR, Raw::Bytes(&e.xattrs), Packing::Fast),
            (SEC_SPAN, Raw::Bytes(&spans), Packing::Fast),
        ];
        if let Some(modules) = &modules {
            eager.push((SEC_LOAD, Raw::Bytes(modules), Packing::Fast));
        }
        write_container(ArchiveKind::LayerPart, eager, &self.windows, self.chunks.as_ref(), None, out)
    }

    /// Reads the part in file `path`, checking everything it records (a part may come from a shared store).
    pub fn read(path: &Path) -> Result<LayerPart, FormatError> {
        let io = |source| FormatError::Io { path: path.to_path_buf(), source };
        let file = crate::open_regular(path).map_err(io)?;
        // SAFETY: the file is mapped read-only and only read while mapped; parts are written to a temporary
        // name and renamed into place, never changed afterwards. Every access is bounds-checked.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::from_bytes(&map)
    }

    /// Reads a part held in memory.
    pub fn from_bytes(buf: &[u8]) -> Result<LayerPart, FormatError> {
        let len = buf.len() as u64;
        let (header, kind) = check_header(buf, len)?;
        if kind != ArchiveKind::LayerPart {
            return Err(Corruption::NotAPart { found: kind }.into());
        }
        let start = header.table_offset as usize;
        let sections = check_table(&header, &buf[start..start + header.sections as usize * SECTION_ENTRY_LEN], len)?;
        let load = |id| -> Result<Vec<u8>, FormatError> {
            let e = find(&sections, id)?;
            let stored = &buf[e.offset as usize..(e.offset + e.stored_len) as usize];
            Ok(decode_section(e, stored)?.unwrap_or_else(|| stored.to_vec()))
        };
        let meta: PartMeta = serde_json::from_slice(&load(SEC_META)?).map_err(FormatError::Meta)?;
        let (entr, strs, xatr, span) = (load(SEC_ENTR)?, load(SEC_STRS)?, load(SEC_XATR)?, load(SEC_SPAN)?);
        let wind = find(&sections, SEC_WIND)?;
        let stored_windows = &buf[wind.offset as usize..(wind.offset + wind.stored_len) as usize];
        if crc32c::crc32c(stored_windows) != wind.crc {
            return Err(FormatError::Checksum { what: "section WIND".into() });
        }
        let windows = Windows::from_stored(stored_windows)?;
        let spans = decode_spans(&span, &meta, windows.len())?;
        let entries = PartEntries::from_sections(entr, strs, xatr, &meta)?;
        let chunks = match sections.iter().find(|s| s.id == SEC_CHNK) {
            None => None,
            Some(e) => {
                let stored = &buf[e.offset as usize..(e.offset + e.stored_len) as usize];
                if crc32c::crc32c(stored) != e.crc {
                    return Err(FormatError::Checksum { what: "section CHNK".into() });
                }
                let bad = Corruption::ChunkSection { len: stored.len(), size: meta.size, spans: spans.len() };
                Some(Chunks::decode(stored, spans.len()).ok_or(bad)?)
            }
        };
        let loads = match sections.iter().find(|s| s.id == SEC_LOAD) {
            None => PartLoads::default(),
            Some(_) => loads::decode(&load(SEC_LOAD)?, meta.uncompressed_size).ok_or(Corruption::SectionDecode {
                section: "LOAD".into(),
                why: std::io::Error::other("not a list of module imports"),
            })?,
        };
        Ok(LayerPart { meta, entries, spans, windows, chunks, loads })
    }
}

/// Decodes and checks the span table: in order, inside the layer, windows inside `WIND`.
fn decode_spans(raw: &[u8], meta: &PartMeta, windows_len: u64) -> Result<Vec<SpanSpec>, FormatError> {
    if raw.len() % SPAN_LEN != 0 {
        return Err(Corruption::PartialRecord { section: "SPAN", len: raw.len(), record: SPAN_LEN }.into());
    }
    let mut spans: Vec<SpanSpec> = Vec::with_capacity(raw.len() / SPAN_LEN);
    for (i, rec) in raw.chunks_exact(SPAN_LEN).enumerate() {
        let mut r = Le(rec);
        let (out_offset, in_offset, window_off, window_len, bits) = (r.u64(), r.u64(), r.u64(), r.u32(), r.u8());
        r.skip(3);
        let digest = Digest::from_sha256(r.array32());
        let prev = spans.last().map_or((0, 0), |p| (p.out_offset, p.in_offset));
        let in_order = out_offset >= prev.0 && in_offset >= prev.1;
        let inside = out_offset <= meta.uncompressed_size && in_offset <= meta.size && bits <= 7;
        let window_inside = window_off.checked_add(u64::from(window_len)).is_some_and(|end| end <= windows_len);
        if !in_order || !inside || !window_inside {
            return Err(FormatError::BadSize {
                what: format!("layer part {}: span {i} is out of order or outside its layer", meta.digest),
            });
        }
        let window = WindowRef { offset: window_off, len: window_len };
        spans.push(SpanSpec { out_offset, in_offset, bits, digest, window });
    }
    Ok(spans)
}
