//! Fuzzes the `.clip` reader: any bytes must open with an error or give an archive whose every accessor
//! answers without panicking.
//!
//! Mutated bytes almost never carry valid checksums, so before parsing, the target writes the magic and
//! recomputes the crc32c of every section that lies inside the input, of the section table and of the
//! header (see crates/format/src/layout.rs): mutations reach the decoders behind the checks. (The checks
//! themselves are covered by the format crate's unit tests.)
#![no_main]

use clip_format::layout::{HEADER_LEN, MAGIC, SECTION_ENTRY_LEN};
use clip_format::{Archive, Ino, NodeKind};
use libfuzzer_sys::fuzz_target;

/// Makes the header, section table and section checksums of `data` right, where they can be found.
fn fix_checksums(data: &mut [u8]) {
    if data.len() < HEADER_LEN {
        return;
    }
    data[..8].copy_from_slice(&MAGIC);
    let u32_at = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
    let u64_at = |d: &[u8], at: usize| u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
    let sections = u32_at(data, 12) as usize;
    let table = u64_at(data, 16) as usize;
    let table_end = sections.checked_mul(SECTION_ENTRY_LEN).and_then(|n| n.checked_add(table));
    if let Some(end) = table_end.filter(|&end| end <= data.len() && sections <= 64) {
        for i in 0..sections {
            let entry = table + i * SECTION_ENTRY_LEN;
            let (offset, stored) = (u64_at(data, entry + 8), u64_at(data, entry + 16));
            if let Some(range) = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(stored).ok())
                .and_then(|(o, n)| Some(o..o.checked_add(n)?))
                .filter(|r| r.end <= data.len())
            {
                let crc = crc32c::crc32c(&data[range]);
                data[entry + 32..entry + 36].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&data[table..end]);
        data[24..28].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&data[..28]);
    data[28..32].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    fix_checksums(&mut data);
    let Ok(archive) = Archive::from_bytes(data) else { return };
    let _ = archive.meta();
    for i in 0..archive.node_count().min(10_000) {
        let Ok(node) = archive.node(Ino::from_index(i)) else { continue };
        let _ = archive.xattrs(&node);
        match node.kind() {
            NodeKind::Dir => {
                for child in archive.children(&node).take(1000) {
                    if let Ok((name, _)) = child {
                        let _ = archive.lookup(&node, name);
                    }
                }
            }
            NodeKind::Symlink => {
                let _ = archive.symlink_target(&node);
            }
            NodeKind::File => {
                if let Some(d) = node.data_ref() {
                    if let Ok(span) = archive.find_span(d.layer, d.offset) {
                        let _ = archive.span_range(d.layer, span);
                        let _ = archive.window(span);
                    }
                }
            }
            _ => {}
        }
    }
    let _ = archive.resolve(b"/usr/bin/../lib/x");
});
