//! Shared by the fuzz targets that open `.clip` files: mutated bytes almost never carry valid checksums, so
//! [`fix_checksums`] writes the magic and recomputes the crc32c of every section that lies inside the input,
//! of the section table and of the header (see crates/format/src/layout.rs), and mutations reach the code
//! behind the checks.

use clip_format::layout::{HEADER_LEN, MAGIC, SECTION_ENTRY_LEN};

/// Makes the header, section table and section checksums of `data` right, where they can be found.
pub fn fix_checksums(data: &mut [u8]) {
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
