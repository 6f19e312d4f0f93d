//! [`Windows`]: the `WIND` section in the making. Each gzip checkpoint window is zstd-compressed the moment
//! it is added and appended; past [`SPILL_AT`] bytes the section moves to an anonymous temporary file, so
//! indexing a 20 GB layer (20 000 windows) holds a few dozen bytes per span in memory, not the windows.

use std::io::Write;

use crate::spill::Spill;
use crate::writer::ZSTD_LEVEL;
use crate::FormatError;

/// Largest raw window: deflate's 32 KiB history.
pub const MAX_WINDOW: usize = 32 * 1024;
/// Stored bytes kept in memory before the section moves to a temporary file.
pub const SPILL_AT: usize = 1 << 20;

/// A window as the `WIND` section stores it: zstd-compressed (read back with [`crate::Archive::decode_window`]).
pub fn encode_window(raw: &[u8]) -> Result<Vec<u8>, FormatError> {
    zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(FormatError::Write)
}

/// Where a span's stored (compressed) window sits in the `WIND` section. `len` 0: no window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowRef {
    pub offset: u64,
    pub len: u32,
}

/// The stored checkpoint windows of an index, in the order they are written. Cloning is cheap (a spilled
/// file is shared, and copied only when a clone is appended to).
#[derive(Clone, Debug)]
pub struct Windows {
    /// The stored bytes: in memory up to [`SPILL_AT`], then in a temporary file.
    stored: Spill,
    crc: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Windows { stored: Spill::new(SPILL_AT), crc: 0 }
    }
}

impl Windows {
    /// An empty section.
    pub fn new() -> Self {
        Self::default()
    }

    /// The windows of a stored `WIND` section (e.g. a layer part's), as written by [`Windows::push`].
    pub fn from_stored(stored: &[u8]) -> Result<Self, FormatError> {
        let mut windows = Self::new();
        for chunk in stored.chunks(SPILL_AT) {
            windows.append_stored(chunk)?;
        }
        Ok(windows)
    }

    /// Compress `raw` (a checkpoint window, at most [`MAX_WINDOW`] bytes) and append it. An empty window
    /// is stored as nothing (`WindowRef::default()`).
    pub fn push(&mut self, raw: &[u8]) -> Result<WindowRef, FormatError> {
        if raw.len() > MAX_WINDOW {
            return Err(FormatError::Invalid(format!("window of {} bytes (at most {MAX_WINDOW})", raw.len())));
        }
        if raw.is_empty() {
            return Ok(WindowRef::default());
        }
        let stored = encode_window(raw)?;
        let offset = self.len();
        self.append_stored(&stored)?;
        Ok(WindowRef { offset, len: stored.len() as u32 })
    }

    /// Append all of `other`'s windows; returns the offset its windows now start at (add it to their
    /// [`WindowRef::offset`]s).
    pub fn append(&mut self, other: &Windows) -> Result<u64, FormatError> {
        let base = self.len();
        other.stored.for_each_chunk(|chunk| self.append_stored(chunk))?;
        Ok(base)
    }

    /// Stored bytes so far: the length of the `WIND` section.
    pub fn len(&self) -> u64 {
        self.stored.len()
    }

    /// Whether no window was stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored bytes held in memory (the rest is in the temporary file).
    pub fn in_memory(&self) -> usize {
        self.stored.in_memory()
    }

    /// CRC-32C of the stored bytes, as the section table records it.
    pub(crate) fn crc(&self) -> u32 {
        self.crc
    }

    /// Write the stored bytes to `out`.
    pub(crate) fn write_to(&self, out: &mut impl Write) -> Result<(), FormatError> {
        self.stored.for_each_chunk(|chunk| out.write_all(chunk).map_err(FormatError::Write))
    }

    fn append_stored(&mut self, stored: &[u8]) -> Result<(), FormatError> {
        self.stored.append(stored).map_err(FormatError::Write)?;
        self.crc = crc32c::crc32c_append(self.crc, stored);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(w: &Windows) -> Vec<u8> {
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        out
    }

    /// A window that does not compress much, so a few dozen of them cross [`SPILL_AT`].
    fn noisy(seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..MAX_WINDOW)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn windows_are_stored_compressed_and_spill_to_a_file_past_the_limit() {
        let mut w = Windows::new();
        assert_eq!(w.push(&[]).unwrap(), WindowRef::default());
        let first = w.push(&[5u8; MAX_WINDOW]).unwrap();
        assert!(first.len < 100, "a zeroed window stores small: {}", first.len);
        let mut expected = zstd::bulk::compress(&[5u8; MAX_WINDOW], ZSTD_LEVEL).unwrap();
        for i in 0..2 * SPILL_AT / MAX_WINDOW {
            let raw = noisy(i as u64);
            let r = w.push(&raw).unwrap();
            assert_eq!(r.offset, expected.len() as u64);
            expected.extend(zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap());
            assert!(w.in_memory() <= SPILL_AT);
        }
        assert!(w.stored.as_slice().is_none(), "spilled");
        assert_eq!(w.len(), expected.len() as u64);
        assert_eq!(w.crc(), crc32c::crc32c(&expected));
        assert_eq!(bytes(&w), expected);
        assert!(w.push(&[0u8; MAX_WINDOW + 1]).is_err());
    }

    #[test]
    fn append_and_clones_keep_their_own_bytes() {
        let mut a = Windows::new();
        for i in 0..40 {
            a.push(&noisy(i)).unwrap();
        }
        let before = bytes(&a);
        let snapshot = a.clone();
        let mut b = Windows::new();
        b.push(b"layer two").unwrap();
        let base = a.append(&b).unwrap();
        assert_eq!(base, before.len() as u64);
        assert_eq!(bytes(&snapshot), before, "the clone did not see the append");
        let mut all = before.clone();
        all.extend(bytes(&b));
        assert_eq!(bytes(&a), all);
        assert_eq!(a.crc(), crc32c::crc32c(&all));
    }
}
