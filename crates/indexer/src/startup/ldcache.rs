//! `/etc/ld.so.cache`, glibc's map from a library's name to where `ldconfig` found it (the directories of
//! `/etc/ld.so.conf`, which the standard ones need not include). Only the current format
//! (`glibc-ld.so.cache1.1`, alone or after the old `ld.so-1.7.0` table) is read; anything else, or any
//! entry that does not lie in the file, is left out.

use std::collections::HashMap;

/// The most bytes of a cache read (a real one is some tens of KiB).
pub(crate) const MAX_CACHE: u64 = 4 << 20;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// magic + version (20), nlibs, len_strings (8), flags and padding (4), extension offset and 3 unused (16).
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;
const OLD_ENTRY: usize = 12;

/// A library name → the paths the cache lists for it, in its order (one per ELF kind, typically).
pub(crate) type LdCache = HashMap<Vec<u8>, Vec<Vec<u8>>>;

/// Parses a cache; an unreadable one is empty.
pub(crate) fn parse(bytes: &[u8]) -> LdCache {
    let mut cache = LdCache::new();
    let Some(base) = new_format_start(bytes) else { return cache };
    let table = &bytes[base..];
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|v| u32::from_le_bytes(v.try_into().unwrap_or_default()));
    let Some(nlibs) = u32_at(table, 20) else { return cache };
    // Strings are offsets from the start of this table, NUL-terminated.
    let string = |offset: u32| {
        let rest = table.get(offset as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (end > 0 && end <= 4096).then(|| rest[..end].to_vec())
    };
    let entries = table.get(NEW_HEADER..).unwrap_or_default();
    for entry in entries.chunks_exact(NEW_ENTRY).take(nlibs as usize) {
        let (Some(key), Some(value)) = (u32_at(entry, 4).and_then(string), u32_at(entry, 8).and_then(string)) else {
            continue;
        };
        if value.starts_with(b"/") {
            cache.entry(key).or_default().push(value);
        }
    }
    cache
}

/// Where the new-format table starts: at 0, or after the old table (aligned to 8).
fn new_format_start(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(NEW_MAGIC) {
        return Some(0);
    }
    if !bytes.starts_with(OLD_MAGIC) {
        return None;
    }
    let nlibs = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    let start = nlibs.checked_mul(OLD_ENTRY)?.checked_add(16)?.checked_next_multiple_of(8)?;
    bytes.get(start..)?.starts_with(NEW_MAGIC).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_cache_names_libc_where_it_is() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else { panic!("the host has no /etc/ld.so.cache") };
        let cache = parse(&bytes);
        let libc = cache.get(&b"libc.so.6"[..]).expect("libc.so.6 is in the host's cache");
        assert!(libc.iter().any(|p| std::path::Path::new(std::str::from_utf8(p).unwrap()).exists()), "{libc:?}");
    }

    #[test]
    fn a_damaged_cache_gives_less_and_never_panics() {
        let bytes = std::fs::read("/etc/ld.so.cache").unwrap();
        let whole = parse(&bytes).len();
        for len in (0..bytes.len()).step_by(97) {
            assert!(parse(&bytes[..len]).len() <= whole);
        }
        let mut lying = bytes.clone();
        let at = new_format_start(&bytes).unwrap() + 20;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&lying).len(), whole, "nlibs beyond the file");
        assert!(parse(b"ld.so-1.7.0\0\xff\xff\xff\xff").is_empty());
    }
}
