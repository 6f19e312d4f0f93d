//! A careful streaming tar parser for OCI layers.
//!
//! [`TarReader`] reads an uncompressed tar stream front to back, each byte once and without seeking (it
//! sits right behind a decompressor), and yields one [`TarEntry`] per file-system object: its normalized
//! path, kind, attributes, xattrs, and for regular files the stream offset where the content starts
//! ([`TarEntry::data_offset`]). File contents are read and discarded through a small buffer, never kept,
//! except those of the files a caller picks ([`TarReader::keep_data`]), read into one reused buffer.
//!
//! It reads ustar, old GNU and PAX archives the way Go's `archive/tar` does (the reader behind `umoci`,
//! Docker and containerd), and refuses what it cannot represent faithfully: GNU sparse files, unknown entry
//! types, absolute paths, `..` components, oversized extension headers, out-of-range numbers, bad
//! checksums and streams cut short. Global PAX headers (`g`) are checked and then ignored, as Docker and
//! containerd do.
//!
//! ```
//! use clip_indexer::tar::{EntryKind, TarReader};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer: &[u8] = &[0u8; 1024]; // an empty archive: two zero blocks
//! let mut files = Vec::new(); // (path, where the content starts, length)
//! for entry in TarReader::new(layer) {
//!     let entry = entry?;
//!     if entry.kind == EntryKind::File {
//!         files.push((entry.path, entry.data_offset, entry.size));
//!     }
//! }
//! assert!(files.is_empty());
//! # Ok(()) }
//! ```

mod header;
mod path;
mod pax;
#[cfg(test)]
mod tests;

use std::io::{self, Read};

use clip_format::Timestamp;
use header::{Header, BLOCK};

pub(crate) use path::display as display_path;

/// Largest PAX extended header accepted (Go's limit for "special files").
pub const MAX_PAX_SIZE: u64 = 1 << 20;
/// Largest GNU long name or long link name accepted.
pub const MAX_LONG_NAME: u64 = 64 << 10;
const SKIP_BUFFER: usize = 64 << 10;

pub use clip_format::{EntryKind, TarEntry};

/// Why a tar stream could not be read. Offsets are byte offsets in the uncompressed stream.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading the tar stream at byte {offset}")]
    Io { offset: u64, source: io::Error },
    #[error("the tar stream ends in the middle of an entry at byte {offset}: the layer is truncated")]
    Truncated { offset: u64 },
    #[error(
        "tar header at byte {offset} has a bad checksum (stored {stored}, computed {computed:o}): \
         the layer is corrupt or not an uncompressed tar stream"
    )]
    BadChecksum { offset: u64, stored: String, computed: i64 },
    #[error("tar header at byte {offset}: the {field} field is not a number")]
    InvalidNumber { offset: u64, field: &'static str },
    #[error("tar header at byte {offset}: the {field} value is out of range")]
    NumberOutOfRange { offset: u64, field: &'static str },
    #[error("PAX header at byte {offset} is malformed: {reason}")]
    InvalidPax { offset: u64, reason: &'static str },
    #[error("PAX header at byte {offset} claims {size} bytes (at most {MAX_PAX_SIZE} are accepted): the layer is malformed or hostile")]
    PaxTooLarge { offset: u64, size: u64 },
    #[error("GNU long name header at byte {offset} claims {size} bytes (at most {MAX_LONG_NAME} are accepted): the layer is malformed or hostile")]
    LongNameTooLarge { offset: u64, size: u64 },
    #[error(
        "tar entry at byte {offset} is a GNU sparse file, which is not supported: rebuild the layer without --sparse"
    )]
    Sparse { offset: u64 },
    #[error("tar entry {path} at byte {offset} has type {typeflag:?}, which is not supported")]
    UnsupportedType { offset: u64, path: String, typeflag: char },
    #[error("tar entry {path} at byte {offset} is absolute or contains '..': the layer is malformed or hostile")]
    UnsafePath { offset: u64, path: String },
    #[error(
        "tar entry at byte {offset} names the root directory but is a {kind:?}: the layer is malformed or hostile"
    )]
    RootNotDir { offset: u64, kind: EntryKind },
    #[error("tar stream has a zero block followed by a header at byte {offset}: the layer is corrupt")]
    ZeroBlockThenHeader { offset: u64 },
    #[error("tar stream ends after an extension header at byte {offset} with no entry for it: the layer is truncated")]
    DanglingExtension { offset: u64 },
}

/// Picks the regular files whose bytes a [`TarReader`] keeps, by path, size and permission bits.
pub type KeepData = fn(&[u8], u64, u32) -> bool;

/// Streams the entries of an uncompressed tar archive. See the [module docs](self).
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    skip: Vec<u8>,
    finished: bool,
    /// Which regular files' bytes to keep, for [`TarReader::kept_data`].
    keep: Option<KeepData>,
    /// The last entry's bytes, when `keep` took them (the buffer is reused).
    kept: Vec<u8>,
    kept_last: bool,
}

/// Extension headers seen before the entry they apply to.
#[derive(Default)]
struct Pending {
    first_offset: Option<u64>,
    pax: Option<pax::Records>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> TarReader<R> {
        TarReader { inner, pos: 0, skip: Vec::new(), finished: false, keep: None, kept: Vec::new(), kept_last: false }
    }

    /// Keeps the bytes of each regular file that `keep(path, size, mode)` picks, for [`TarReader::kept_data`]
    /// (the others' are skipped). The caller bounds the size: the bytes are read into memory.
    pub fn keep_data(&mut self, keep: KeepData) {
        self.keep = Some(keep);
    }

    /// The bytes of the entry [`TarReader::next_entry`] returned last, when [`TarReader::keep_data`] picked it.
    pub fn kept_data(&self) -> Option<&[u8]> {
        self.kept_last.then_some(&self.kept[..])
    }

    /// Bytes consumed from the stream so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader (reading from it directly desynchronizes the parser).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (reading from it directly desynchronizes the parser).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying reader. After the end-of-archive marker the stream may hold more padding, which
    /// this reader does not consume.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next entry; `Ok(None)` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        let mut pending = Pending::default();
        loop {
            let offset = self.pos;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return end(&pending);
            }
            if header::is_zero(&block) {
                let mut second = [0u8; BLOCK];
                if self.read_block(&mut second)? && !header::is_zero(&second) {
                    return Err(TarError::ZeroBlockThenHeader { offset: offset + BLOCK as u64 });
                }
                return end(&pending);
            }
            let hdr = header::parse(&block, offset)?;
            match hdr.typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    let limit = if matches!(hdr.typeflag, b'x' | b'g') { MAX_PAX_SIZE } else { MAX_LONG_NAME };
                    let size =
                        u64::try_from(hdr.size).map_err(|_| TarError::NumberOutOfRange { offset, field: "size" })?;
                    if size > limit {
                        return Err(if limit == MAX_PAX_SIZE {
                            TarError::PaxTooLarge { offset, size }
                        } else {
                            TarError::LongNameTooLarge { offset, size }
                        });
                    }
                    let data = self.read_data(size)?;
                    match hdr.typeflag {
                        b'x' => pending.pax = Some(pax::Records::parse(&data, offset)?),
                        b'g' => {
                            pax::Records::parse(&data, offset)?;
                            tracing::debug!(offset, "ignoring PAX global header");
                            continue;
                        }
                        // Like Go, an empty long name leaves the header's own name in place.
                        b'L' => pending.long_name = Some(header::c_string(&data)).filter(|n| !n.is_empty()),
                        _ => pending.long_link = Some(header::c_string(&data)).filter(|n| !n.is_empty()),
                    }
                    pending.first_offset.get_or_insert(offset);
                }
                _ => return self.finish_entry(hdr, pending, offset).map(Some),
            }
        }
    }

    fn finish_entry(&mut self, hdr: Header, pending: Pending, offset: u64) -> Result<TarEntry, TarError> {
        let header_offset = pending.first_offset.unwrap_or(offset);
        let pax = pending.pax.unwrap_or_default();
        let raw_path = match (&pending.long_name, pax.path()) {
            (Some(long), _) => long.clone(),
            (None, Some(p)) => p.to_vec(),
            (None, None) => hdr.name,
        };
        let raw_link = match (&pending.long_link, pax.linkpath()) {
            (Some(long), _) => long.clone(),
            (None, Some(p)) => p.to_vec(),
            (None, None) => hdr.linkname,
        };
        let kind = match hdr.typeflag {
            b'0' | b'7' => EntryKind::File,
            0 if raw_path.last() == Some(&b'/') => EntryKind::Dir,
            0 => EntryKind::File,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'S' => return Err(TarError::Sparse { offset }),
            other => {
                return Err(TarError::UnsupportedType {
                    offset,
                    path: path::display(&raw_path),
                    typeflag: char::from(other),
                })
            }
        };
        let unsafe_path = |raw: &[u8]| TarError::UnsafePath { offset, path: path::display(raw) };
        let path = path::normalize(&raw_path).ok_or_else(|| unsafe_path(&raw_path))?;
        if path.is_empty() && kind != EntryKind::Dir {
            return Err(TarError::RootNotDir { offset, kind });
        }
        let link_target = match kind {
            EntryKind::HardLink => path::normalize(&raw_link).ok_or_else(|| unsafe_path(&raw_link))?,
            EntryKind::Symlink => raw_link,
            _ => Vec::new(),
        };
        let size = match pax.number("size")? {
            Some(size) => size,
            None => u64::try_from(hdr.size).map_err(|_| TarError::NumberOutOfRange { offset, field: "size" })?,
        };
        let id = |key: &'static str, value: i64| -> Result<u32, TarError> {
            let value = match pax.number(key)? {
                Some(v) => v,
                None => u64::try_from(value).map_err(|_| TarError::NumberOutOfRange { offset, field: key })?,
            };
            u32::try_from(value).map_err(|_| TarError::NumberOutOfRange { offset, field: key })
        };
        let uid = id("uid", hdr.uid)?;
        let gid = id("gid", hdr.gid)?;
        let mtime = pax.mtime()?.unwrap_or(Timestamp { sec: hdr.mtime, nsec: 0 });
        let xattrs = pax.xattrs()?;
        let (dev_major, dev_minor) = match kind {
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let dev = |field: &'static str, v: i64| {
                    u32::try_from(v).map_err(|_| TarError::NumberOutOfRange { offset, field })
                };
                (dev("devmajor", hdr.devmajor)?, dev("devminor", hdr.devminor)?)
            }
            _ => (0, 0),
        };
        let data_offset = self.pos;
        let size = if kind == EntryKind::File { size } else { 0 };
        // Masked to the permission bits, so the cast cannot lose anything that matters.
        let mode = (hdr.mode & 0o7777) as u32;
        self.kept_last = kind == EntryKind::File && self.keep.is_some_and(|keep| keep(&path, size, mode));
        if self.kept_last {
            self.read_kept(size)?;
        } else {
            self.skip_data(size)?;
        }
        Ok(TarEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime,
            link_target,
            dev_major,
            dev_minor,
            xattrs,
            data_offset,
            header_offset,
        })
    }

    /// Read one block; `false` at a clean end of stream (no byte read), `Truncated` for a partial block.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let start = self.pos;
        let n = self.read_up_to(block)?;
        match n {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(TarError::Truncated { offset: start }),
        }
    }

    /// Read `size` bytes of an extension header's data (size already bounded) and skip its padding.
    /// Reads an entry's content into the reused buffer `kept`, and skips the padding.
    fn read_kept(&mut self, size: u64) -> Result<(), TarError> {
        let len = usize::try_from(size).map_err(|_| TarError::Truncated { offset: self.pos })?;
        let mut kept = std::mem::take(&mut self.kept);
        kept.clear();
        kept.resize(len, 0);
        let got = self.read_up_to(&mut kept);
        self.kept = kept;
        if got? < len {
            return Err(TarError::Truncated { offset: self.pos });
        }
        self.skip_bytes(padding(size))
    }

    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let len = usize::try_from(size).map_err(|_| TarError::Truncated { offset: self.pos })?;
        let mut data = vec![0u8; len];
        if self.read_up_to(&mut data)? < len {
            return Err(TarError::Truncated { offset: self.pos });
        }
        self.skip_bytes(padding(size))?;
        Ok(data)
    }

    /// Skip an entry's content and the padding to the next block.
    fn skip_data(&mut self, size: u64) -> Result<(), TarError> {
        let total =
            size.checked_add(padding(size)).ok_or(TarError::NumberOutOfRange { offset: self.pos, field: "size" })?;
        self.skip_bytes(total)
    }

    fn skip_bytes(&mut self, mut n: u64) -> Result<(), TarError> {
        if n == 0 {
            return Ok(());
        }
        if self.skip.is_empty() {
            self.skip = vec![0u8; SKIP_BUFFER];
        }
        let mut skip = std::mem::take(&mut self.skip);
        let result = (|| {
            while n > 0 {
                let want = usize::try_from(n).unwrap_or(usize::MAX).min(skip.len());
                let got = self.read_up_to(&mut skip[..want])?;
                if got < want {
                    return Err(TarError::Truncated { offset: self.pos });
                }
                n -= got as u64;
            }
            Ok(())
        })();
        self.skip = skip;
        result
    }

    /// Fill `buf` unless the stream ends first; returns how many bytes were read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(TarError::Io { offset: self.pos, source }),
            }
        }
        Ok(filled)
    }
}

/// The end of the archive: fine unless extension headers are waiting for their entry.
fn end(pending: &Pending) -> Result<Option<TarEntry>, TarError> {
    match pending.first_offset {
        Some(offset) => Err(TarError::DanglingExtension { offset }),
        None => Ok(None),
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> Iterator for TarReader<R> {
    type Item = Result<TarEntry, TarError>;

    /// Entries in stream order; after the end or the first error, `None` forever.
    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let result = self.next_entry().transpose();
        if !matches!(result, Some(Ok(_))) {
            self.finished = true;
        }
        result
    }
}

impl<R: Read> std::iter::FusedIterator for TarReader<R> {}
