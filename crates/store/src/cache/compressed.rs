//! Compressed span files. A span that compresses well (the tar headers and padding around tiny files do: a
//! span of 45-byte files is ~95 % of them) is kept as `spans/ab/HEX.zst` instead of `spans/ab/HEX`: zstd
//! frames of [`FRAME`] inflated bytes each, then a skippable frame holding every frame's compressed size, so
//! a range is read by inflating only the frames it touches (and `zstd -d` reads the file as it is). Every
//! frame carries zstd's checksum of its inflated bytes, so damage to a file, sealed or not, shows when it is
//! inflated. Trust is the same as for a raw file (see `seal`): the inflated bytes are hashed against the
//! digest before a process first trusts an unsealed file.
//!
//! A span is kept compressed only when that takes at most a sixth of the disk blocks of its raw bytes, as
//! spans made mostly of tar headers and padding do (tiny files: ~1/70). Text compresses 2–5× at level 1
//! and binaries less: spans of bigger files stay raw, read by range with one `pread` and copied whole for
//! passthrough (on the Debian bench image, 9 spans of 209 are kept compressed).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::CParameter;

use super::on_disk;

/// Inflated bytes per frame: a small file's read inflates one or two of them.
pub(crate) const FRAME: u64 = 32 << 10;
/// zstd level: the headers this is for compress as well at 1 as higher, and faster.
const LEVEL: i32 = 1;
/// Kept compressed when the compressed file takes at most 1/WORTH of the raw file's disk blocks.
const WORTH: u64 = 6;
/// The magic of the skippable frame that holds the table (zstd reserves 0x184D2A50..=0x184D2A5F).
const SKIPPABLE: u32 = 0x184D_2A5E;
/// Ends the table, so a file of another layout is not mistaken for one.
const TAG: [u8; 4] = *b"clz1";

/// Why a compressed span file cannot be served.
#[derive(Debug)]
pub(crate) enum Unusable {
    /// Reading it failed: leave it, a later read may succeed.
    Io(io::Error),
    /// Its bytes are not a compressed span of that length: delete it.
    Damaged(&'static str),
}

impl From<io::Error> for Unusable {
    fn from(e: io::Error) -> Self {
        Unusable::Io(e)
    }
}

fn frames(len: u64) -> usize {
    len.div_ceil(FRAME) as usize
}

/// Bytes after the last data frame: the skippable frame's header, a u32 size per frame, the tag.
fn trailer_len(frames: usize) -> u64 {
    8 + 4 * frames as u64 + 4
}

/// `bytes` as a compressed span file, when it is worth it (see the module docs); `None` keeps them raw. The
/// first frame decides early for bytes that do not compress (most spans of big files), so those cost one
/// frame's compression.
pub(crate) fn compress(bytes: &[u8]) -> Option<Vec<u8>> {
    let raw_blocks = on_disk(bytes.len() as u64);
    let mut z = Compressor::new(LEVEL).ok()?;
    z.set_parameter(CParameter::ChecksumFlag(true)).ok()?;
    let mut out = Vec::new();
    let mut sizes = Vec::with_capacity(frames(bytes.len() as u64));
    for chunk in bytes.chunks(FRAME as usize) {
        let frame = z.compress(chunk).ok()?;
        if sizes.is_empty() && frame.len() as u64 * WORTH > chunk.len() as u64 {
            return None;
        }
        sizes.push(u32::try_from(frame.len()).ok()?);
        out.extend_from_slice(&frame);
        if on_disk(out.len() as u64) * WORTH > raw_blocks {
            return None;
        }
    }
    let n = sizes.len();
    out.extend_from_slice(&SKIPPABLE.to_le_bytes());
    out.extend_from_slice(&u32::try_from(4 * n + 4).ok()?.to_le_bytes());
    for s in sizes {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.extend_from_slice(&TAG);
    (n > 0 && on_disk(out.len() as u64) * WORTH <= raw_blocks).then_some(out)
}

/// Where each frame of the compressed file `file` (`file_len` bytes, inflating to `len`) ends, read from its
/// table and checked against the file's length.
fn frame_ends(file: &File, file_len: u64, len: u64) -> Result<Vec<u64>, Unusable> {
    let n = frames(len);
    let tail = trailer_len(n);
    if n == 0 || file_len < tail {
        return Err(Unusable::Damaged("shorter than its table"));
    }
    let mut t = vec![0u8; tail as usize];
    file.read_exact_at(&mut t, file_len - tail)?;
    let word = |i: usize| u32::from_le_bytes(t[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != SKIPPABLE || u64::from(word(4)) != tail - 8 || t[t.len() - 4..] != TAG {
        return Err(Unusable::Damaged("no frame table for that length"));
    }
    let mut ends = Vec::with_capacity(n);
    let mut at = 0u64;
    for i in 0..n {
        at += u64::from(word(8 + 4 * i));
        ends.push(at);
    }
    if at != file_len - tail {
        return Err(Unusable::Damaged("frame table does not match the file"));
    }
    Ok(ends)
}

/// Inflated bytes `range` of the compressed span file `file` (`file_len` bytes on disk, `len` inflated):
/// reads and inflates only the frames the range touches, each checked against its own checksum and length.
pub(crate) fn read_range(file: &File, file_len: u64, len: u64, range: Range<u64>) -> Result<Vec<u8>, Unusable> {
    let ends = frame_ends(file, file_len, len)?;
    if range.start >= range.end {
        return Ok(Vec::new());
    }
    if range.end > len {
        // The caller's mistake, not the file's: leave the file.
        return Err(Unusable::Io(io::Error::new(io::ErrorKind::InvalidInput, "a range past the span's end")));
    }
    let (first, last) = ((range.start / FRAME) as usize, ((range.end - 1) / FRAME) as usize);
    let start = if first == 0 { 0 } else { ends[first - 1] };
    let mut packed = vec![0u8; (ends[last] - start) as usize];
    file.read_exact_at(&mut packed, start)?;
    let mut z = Decompressor::new()?;
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    let mut at = 0usize;
    for i in first..=last {
        let size = (ends[i] - if i == 0 { 0 } else { ends[i - 1] }) as usize;
        let want = FRAME.min(len - i as u64 * FRAME) as usize;
        let frame =
            z.decompress(&packed[at..at + size], want).map_err(|_| Unusable::Damaged("a frame does not inflate"))?;
        if frame.len() != want {
            return Err(Unusable::Damaged("a frame inflates to the wrong length"));
        }
        let base = i as u64 * FRAME;
        let (lo, hi) = (range.start.max(base) - base, range.end.min(base + FRAME) - base);
        out.extend_from_slice(&frame[lo as usize..hi as usize]);
        at += size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Tar-like bytes: a 512-byte header (mostly zeros, a changing name) and a tiny padded file, repeated.
    fn tiny_files_span(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut i = 0u32;
        while out.len() < len {
            let mut block = vec![0u8; 1024];
            let name = format!("files/d0000/f{i:04}.txt");
            block[..name.len()].copy_from_slice(name.as_bytes());
            let data = format!("file 0/{i}\n");
            block[512..512 + data.len()].copy_from_slice(data.as_bytes());
            out.extend_from_slice(&block);
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    #[test]
    fn tiny_files_compress_and_every_range_reads_back() {
        let span = tiny_files_span(1_000_000);
        let packed = compress(&span).expect("compresses well");
        assert!(on_disk(packed.len() as u64) * 16 <= on_disk(span.len() as u64), "{} bytes", packed.len());
        let (f, file_len) = file_of(&packed);
        let len = span.len() as u64;
        for range in [0..len, 0..1, 5..5, FRAME - 3..FRAME + 3, 3 * FRAME..4 * FRAME, len - 10..len, 123_456..654_321] {
            let got = read_range(f.as_file(), file_len, len, range.clone()).unwrap();
            assert!(got == span[range.start as usize..range.end as usize], "{range:?}");
        }
        // zstd reads the file as it is (the table is a skippable frame).
        assert_eq!(zstd::decode_all(&packed[..]).unwrap(), span);
    }

    #[test]
    fn bytes_that_do_not_compress_well_stay_raw() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&noise).is_none());
        assert!(compress(b"tiny").is_none(), "one block either way");
        // Compressible at first, then not: the whole span is judged.
        let mut mixed = tiny_files_span(FRAME as usize);
        mixed.extend_from_slice(&noise);
        assert!(compress(&mixed).is_none());
    }

    #[test]
    fn damage_is_detected_never_inflated() {
        let span = tiny_files_span(200_000);
        let packed = compress(&span).unwrap();
        let len = span.len() as u64;
        let damaged = |bytes: &[u8], l: u64| {
            let (f, file_len) = file_of(bytes);
            matches!(read_range(f.as_file(), file_len, l, 0..l), Err(Unusable::Damaged(_)))
        };
        for at in [10, packed.len() / 2, packed.len() - 30, packed.len() - 2] {
            let mut bad = packed.clone();
            bad[at] ^= 0x10;
            assert!(damaged(&bad, len), "a flipped byte at {at} went unnoticed");
        }
        assert!(damaged(&packed[..packed.len() - 1], len), "truncated");
        assert!(damaged(&packed, len + FRAME), "another length");
        assert!(damaged(&span, len), "raw bytes under the compressed name");
    }
}
