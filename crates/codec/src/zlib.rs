//! The only `unsafe` code of the crate: a safe wrapper around zlib-rs's C ABI (`libz-rs-sys`) for *raw*
//! inflate (no zlib/gzip wrapper, `windowBits = -15`), plus CRC-32.
//!
//! [`RawInflater`] owns a boxed `z_stream` (zlib keeps a pointer back to the stream inside its state, so the
//! stream must not move after `inflateInit2_`) and ends it on drop. Input and output are passed as slices for
//! the duration of one call only; the stream's `next_in`/`next_out` are cleared afterwards so it never holds a
//! pointer into caller memory between calls.

use std::ffi::{c_int, c_uint};
use std::ptr;

use libz_rs_sys as z;

/// Size of deflate's history window: the most a checkpoint needs to resume.
pub(crate) const WINDOW_SIZE: usize = 32 * 1024;

/// How far one [`RawInflater::inflate`] call may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Run until input or output is exhausted or the deflate stream ends.
    None,
    /// Additionally stop at every deflate block boundary (`Z_BLOCK`).
    Block,
}

/// Outcome of one [`RawInflater::inflate`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Inflated {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes written.
    pub produced: usize,
    /// `Ok(true)` when the deflate stream ended (`Z_STREAM_END`), `Ok(false)` when more can follow
    /// (`Z_OK`, or `Z_BUF_ERROR` = no progress possible with what was given), `Err(code)` on corrupt data.
    pub status: Result<bool, i32>,
}

/// A raw-deflate decompressor (zlib's `inflateInit2(-15)`).
pub(crate) struct RawInflater {
    strm: Box<z::z_stream>,
}

// SAFETY: the z_stream and the state it points to are owned exclusively by this value (allocated through the
// Rust allocator by zlib-rs, no thread-locals, no shared references); `next_in`/`next_out` are null between
// calls, so nothing borrowed crosses threads. All mutation goes through `&mut self`.
unsafe impl Send for RawInflater {}

impl RawInflater {
    /// A fresh raw inflater. `Err` carries zlib's return code.
    pub fn new() -> Result<Self, i32> {
        // `default()` installs zlib-rs's Rust allocator (feature `rust-allocator`).
        let mut strm = Box::new(z::z_stream::default());
        let size = c_int::try_from(std::mem::size_of::<z::z_stream>()).unwrap_or(c_int::MAX);
        // SAFETY: `strm` is a valid, boxed (never moved again) z_stream with zalloc/zfree/opaque set by
        // `default()`; the version string is the library's own NUL-terminated constant and `size` is the size
        // of the struct this crate was compiled against.
        let ret = unsafe { z::inflateInit2_(&mut *strm, -15, z::zlibVersion(), size) };
        if ret != z::Z_OK {
            // Nothing was allocated when init fails; dropping the box is enough.
            return Err(ret);
        }
        Ok(Self { strm })
    }

    /// Forget the current deflate stream and get ready for a new one (keeps the allocation).
    pub fn reset(&mut self) -> Result<(), i32> {
        // SAFETY: `self.strm` was initialised by `inflateInit2_` in `new` and is still live (not ended).
        let ret = unsafe { z::inflateReset(&mut *self.strm) };
        status(ret)
    }

    /// Insert `bits` (1..=16) low bits of `value` before the next input byte (zlib's `inflatePrime`).
    pub fn prime(&mut self, bits: u8, value: u32) -> Result<(), i32> {
        let value = c_int::try_from(value).map_err(|_| z::Z_STREAM_ERROR)?;
        // SAFETY: `self.strm` is an initialised, live inflate stream; the call only touches its state.
        let ret = unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), value) };
        status(ret)
    }

    /// Preset the history window (zlib's `inflateSetDictionary`; only the last 32 KiB matter).
    pub fn set_dictionary(&mut self, dictionary: &[u8]) -> Result<(), i32> {
        // Only the last WINDOW_SIZE bytes can be referenced; this also keeps the length within c_uint.
        let dictionary = &dictionary[dictionary.len().saturating_sub(WINDOW_SIZE)..];
        let len = c_uint::try_from(dictionary.len()).map_err(|_| z::Z_STREAM_ERROR)?;
        // SAFETY: `self.strm` is an initialised, live inflate stream; `dictionary` is valid for reads of
        // `len` bytes for the duration of the call and zlib copies it (keeps no pointer).
        let ret = unsafe { z::inflateSetDictionary(&mut *self.strm, dictionary.as_ptr(), len) };
        status(ret)
    }

    /// Inflate from `input` into `output`. Never keeps pointers into either slice after returning.
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: Flush) -> Inflated {
        let avail_in = c_uint::try_from(input.len()).unwrap_or(c_uint::MAX);
        let avail_out = c_uint::try_from(output.len()).unwrap_or(c_uint::MAX);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out;
        let flush = match flush {
            Flush::None => z::Z_NO_FLUSH,
            Flush::Block => z::Z_BLOCK,
        };
        // SAFETY: `self.strm` is an initialised, live inflate stream; `next_in` points to `avail_in` readable
        // bytes of `input` and `next_out` to `avail_out` writable bytes of `output`, both borrowed for the
        // whole call (avail_* never exceed the slice lengths).
        let ret = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = (avail_in - self.strm.avail_in) as usize;
        let produced = (avail_out - self.strm.avail_out) as usize;
        self.strm.next_in = ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = ptr::null_mut();
        self.strm.avail_out = 0;
        let status = match ret {
            z::Z_STREAM_END => Ok(true),
            z::Z_OK | z::Z_BUF_ERROR => Ok(false),
            code => Err(code),
        };
        Inflated { consumed, produced, status }
    }

    /// If the last `inflate(Flush::Block)` stopped right before a deflate block that is not after the final
    /// one, the number of input bits already consumed but not used (zlib's `data_type & 7`; zlib-rs can in
    /// principle hold up to 32 bits, so the whole bit count is returned and callers split off whole bytes).
    pub fn block_boundary(&self) -> Option<u32> {
        let data_type = self.strm.data_type;
        let at_boundary = data_type & 128 != 0 && data_type & 64 == 0;
        at_boundary.then_some((data_type & 63) as u32)
    }

    /// The current history window (up to 32 KiB of the most recent output of this deflate stream).
    pub fn dictionary(&self) -> Vec<u8> {
        let mut window = vec![0u8; WINDOW_SIZE];
        let mut len: c_uint = 0;
        // SAFETY: `self.strm` is an initialised, live inflate stream; `window` has WINDOW_SIZE = 32768
        // writable bytes, which zlib documents as always enough for a 15-bit window (the only kind a raw
        // inflater with windowBits -15 has); `len` is a valid local.
        let ret = unsafe { z::inflateGetDictionary(&*self.strm, window.as_mut_ptr(), &mut len) };
        let len = if ret == z::Z_OK { (len as usize).min(WINDOW_SIZE) } else { 0 };
        window.truncate(len);
        window.shrink_to_fit();
        window
    }
}

impl Drop for RawInflater {
    fn drop(&mut self) {
        // SAFETY: `self.strm` was initialised in `new` and is ended exactly once, here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

/// Continue the CRC-32 (gzip's checksum) `crc` over `data`. `crc32fast` folds with carry-less multiplies
/// where the CPU has them (zlib-rs's `crc32_z` ran its table fallback here: ~3 % of `clip index`'s CPU).
pub(crate) fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(data);
    h.finalize()
}

fn status(ret: c_int) -> Result<(), i32> {
    if ret == z::Z_OK {
        Ok(())
    } else {
        Err(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_known_vector() {
        assert_eq!(crc32(0, b"123456789"), 0xcbf4_3926);
        let split = crc32(crc32(0, b"1234"), b"56789");
        assert_eq!(split, 0xcbf4_3926);
    }

    #[test]
    fn inflates_stored_block() {
        // A final stored block holding "hi".
        let data = [0x01, 0x02, 0x00, 0xfd, 0xff, b'h', b'i'];
        let mut inflater = RawInflater::new().unwrap();
        let mut out = [0u8; 16];
        let step = inflater.inflate(&data, &mut out, Flush::None);
        assert_eq!(step.status, Ok(true));
        assert_eq!(&out[..step.produced], b"hi");
        assert_eq!(step.consumed, data.len());
        assert_eq!(inflater.dictionary(), b"hi");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut inflater = RawInflater::new().unwrap();
        let mut out = [0u8; 16];
        let step = inflater.inflate(&[0xff; 8], &mut out, Flush::None);
        assert!(step.status.is_err(), "{step:?}");
    }
}
