//! What opening a `.clip` file checks: the header, the section table, each eagerly loaded section's
//! checksum and size, and ([`check_sizes`]) that every size and offset the index records lies where it
//! must (a file's bytes inside its layer, spans in order inside their layer, nothing beyond what a file
//! offset can hold), so no reader ever allocates or computes with a size only the file vouches for.

use crate::error::Corruption;
use crate::layout::*;
use crate::{Archive, ArchiveKind, FormatError, Ino, LayerIndex};

/// The largest size or offset an index may record: what a file offset (`off_t`) can hold.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Checks the layer table, the span table and every regular file's data range (one pass over the spans
/// and the inodes, without allocating).
pub(crate) fn check_sizes(a: &Archive) -> Result<(), FormatError> {
    let bad = |what: String| FormatError::BadSize { what };
    let layers = &a.meta().layers;
    for (i, l) in layers.iter().enumerate() {
        for (what, size) in [("size", l.size), ("uncompressed size", l.uncompressed_size)] {
            if size > MAX_SIZE {
                return Err(bad(format!("layer {i}: its {what} of {size} bytes is more than a file can hold")));
            }
        }
        let (mut out_prev, mut in_prev) = (0, 0);
        for index in a.layer_spans(LayerIndex::from_index(i))? {
            let s = a.span(index)?;
            if s.out_offset < out_prev || s.out_offset > l.uncompressed_size {
                return Err(bad(format!(
                    "span {index} of layer {i} starts at uncompressed offset {}: out of order, or beyond the \
                     layer's {} bytes",
                    s.out_offset, l.uncompressed_size
                )));
            }
            if s.in_offset < in_prev || s.in_offset > l.size {
                return Err(bad(format!(
                    "span {index} of layer {i} starts at compressed offset {}: out of order, or beyond the \
                     layer's {} bytes",
                    s.in_offset, l.size
                )));
            }
            (out_prev, in_prev) = (s.out_offset, s.in_offset);
        }
    }
    for i in 0..a.node_count() {
        let node = a.node(Ino::from_index(i))?;
        let Some(d) = node.data_ref() else { continue };
        let Some(layer) = layers.get(d.layer.index()) else {
            return Err(bad(format!("inode {} names layer {} of {}", node.ino, d.layer, layers.len())));
        };
        if d.offset.checked_add(d.size).is_none_or(|end| end > layer.uncompressed_size) {
            return Err(bad(format!(
                "inode {} records {} bytes at offset {}, beyond the {} bytes of layer {}",
                node.ino, d.size, d.offset, layer.uncompressed_size, d.layer
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_header(buf: &[u8], file_len: u64) -> Result<(Header, ArchiveKind), FormatError> {
    let head: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(FormatError::Truncated { what: "header".into(), needed: HEADER_LEN as u64, len: buf.len() as u64 })?;
    let header = Header::decode(head)?;
    if header.version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: header.version, supported: FORMAT_VERSION });
    }
    let kind = ArchiveKind::from_code(header.kind_code).ok_or(FormatError::UnknownKind(header.kind_code))?;
    if header.sections > MAX_SECTIONS {
        return Err(Corruption::SectionCount { count: header.sections, max: MAX_SECTIONS }.into());
    }
    let end = header.table_offset.saturating_add(u64::from(header.sections) * SECTION_ENTRY_LEN as u64);
    if end > file_len {
        return Err(FormatError::Truncated { what: "section table".into(), needed: end, len: file_len });
    }
    Ok((header, kind))
}

pub(crate) fn check_table(header: &Header, table: &[u8], file_len: u64) -> Result<Vec<SectionEntry>, FormatError> {
    if table.len() != header.sections as usize * SECTION_ENTRY_LEN {
        return Err(FormatError::Truncated {
            what: "section table".into(),
            needed: (header.sections as usize * SECTION_ENTRY_LEN) as u64,
            len: table.len() as u64,
        });
    }
    if crc32c::crc32c(table) != header.table_crc {
        return Err(FormatError::Checksum { what: "section table".into() });
    }
    let sections: Vec<SectionEntry> = table.chunks_exact(SECTION_ENTRY_LEN).map(SectionEntry::decode).collect();
    for s in &sections {
        if s.flags & FLAG_LAZY == 0 && s.stored_len > MAX_EAGER_SECTION {
            return Err(FormatError::BadSize {
                what: format!("section {} stores {} bytes to load at open", s.name(), s.stored_len),
            });
        }
        let end = s.offset.saturating_add(s.stored_len);
        if end > file_len {
            return Err(FormatError::Truncated { what: format!("section {}", s.name()), needed: end, len: file_len });
        }
    }
    Ok(sections)
}

pub(crate) fn find(sections: &[SectionEntry], id: [u8; 4]) -> Result<&SectionEntry, FormatError> {
    sections.iter().find(|s| s.id == id).ok_or(match id {
        SEC_META => FormatError::MissingSection("META"),
        SEC_NODE => FormatError::MissingSection("NODE"),
        SEC_DENT => FormatError::MissingSection("DENT"),
        SEC_STRS => FormatError::MissingSection("STRS"),
        SEC_XATR => FormatError::MissingSection("XATR"),
        SEC_ENTR => FormatError::MissingSection("ENTR"),
        _ => FormatError::MissingSection("SPAN"),
    })
}

/// The most sections a table may list.
const MAX_SECTIONS: u32 = 64;

/// The largest metadata section clip loads (1 GiB: some ten million files).
const MAX_EAGER_SECTION: u64 = 1 << 30;
/// A section whose table length is at most this many times its stored length gets a buffer of that length up
/// front; a larger claim is decoded as a stream, so a lying table costs only what the data expands to.
/// (clip's metadata compresses 3-10×.)
const MAX_TRUSTED_RATIO: u64 = 64;

/// Checks an eager section's checksum; returns its decompressed bytes when it is stored compressed.
pub(crate) fn decode_section(e: &SectionEntry, stored: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
    if crc32c::crc32c(stored) != e.crc {
        return Err(FormatError::Checksum { what: format!("section {}", e.name()) });
    }
    if e.flags & FLAG_ZSTD == 0 {
        return Ok(None);
    }
    if e.raw_len > MAX_EAGER_SECTION {
        return Err(
            Corruption::SectionTooLarge { section: e.name(), raw_len: e.raw_len, max: MAX_EAGER_SECTION }.into()
        );
    }
    let undecodable = |why| Corruption::SectionDecode { section: e.name(), why };
    let mut raw = Vec::new();
    if e.raw_len <= stored.len() as u64 * MAX_TRUSTED_RATIO {
        // A plausible length: decoded in one call into a buffer of exactly that size (the mount waits for
        // this; streaming into a growing buffer took twice as long).
        raw.try_reserve_exact(e.raw_len as usize).map_err(|_| Corruption::SectionTooLarge {
            section: e.name(),
            raw_len: e.raw_len,
            max: MAX_EAGER_SECTION,
        })?;
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(stored, &mut raw))
            .map_err(undecodable)?;
    } else {
        // Stream with a limit instead of trusting `raw_len` for one up-front allocation: a lying header costs
        // only what the data really expands to.
        let decoder = zstd::stream::read::Decoder::new(stored).map_err(undecodable)?;
        std::io::Read::read_to_end(&mut std::io::Read::take(decoder, e.raw_len + 1), &mut raw).map_err(undecodable)?;
    }
    if raw.len() as u64 != e.raw_len {
        let (expected, actual) = (e.raw_len, raw.len() as u64);
        return Err(Corruption::SectionLength { section: e.name(), expected, actual }.into());
    }
    Ok(Some(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SEC_NODE;

    fn entry(stored: &[u8], raw_len: u64) -> SectionEntry {
        let crc = crc32c::crc32c(stored);
        SectionEntry { id: SEC_NODE, flags: FLAG_ZSTD, offset: 0, stored_len: stored.len() as u64, raw_len, crc }
    }

    #[test]
    fn a_section_decodes_to_exactly_the_length_its_table_entry_says() {
        // One section that compresses far beyond MAX_TRUSTED_RATIO (decoded as a stream), one that does not
        // (decoded into a buffer of the table's length).
        let repetitive = vec![7u8; 200_000];
        let mut x = 1u32;
        let noisy: Vec<u8> = (0..50_000)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                b'a' + (x >> 28) as u8
            })
            .collect();
        for (raw, streamed) in [(&repetitive, true), (&noisy, false)] {
            let stored = zstd::bulk::compress(raw, 3).unwrap();
            let len = raw.len() as u64;
            assert_eq!(len > stored.len() as u64 * MAX_TRUSTED_RATIO, streamed, "{} -> {}", len, stored.len());
            assert!(decode_section(&entry(&stored, len), &stored).unwrap().unwrap() == *raw);
            for lie in [len - 1, len + 1, len * 2] {
                let e = entry(&stored, lie);
                assert!(decode_section(&e, &stored).is_err(), "a section of {len} bytes decoded as {lie}");
            }
        }
    }
}
