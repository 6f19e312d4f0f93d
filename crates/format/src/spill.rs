//! [`Spill`]: bytes appended in order and read back, held in memory up to a limit and then moved to an
//! anonymous temporary file, so what grows with the image (checkpoint windows, a layer's entry records, an
//! index's node and directory-entry tables) costs no memory past the limit. Small appends are gathered in a
//! buffer before they reach the file, so a record at a time costs no system call.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::FormatError;

/// Bytes gathered before they are written to the file, once spilled.
const TAIL: usize = 256 << 10;

/// An append-only byte buffer that moves to a temporary file past `limit` bytes. Cloning is cheap (the file
/// is shared, and copied only when a clone is appended to).
#[derive(Clone, Debug)]
pub(crate) struct Spill {
    /// Before spilling: all the bytes; after: the bytes not yet written to `file` (fewer than [`TAIL`]).
    mem: Vec<u8>,
    /// The bytes `0..flushed`, once spilled; positional I/O, so clones can share it.
    file: Option<Arc<File>>,
    flushed: u64,
    limit: usize,
}

impl Spill {
    /// An empty buffer that spills past `limit` bytes.
    pub fn new(limit: usize) -> Spill {
        Spill { mem: Vec::new(), file: None, flushed: 0, limit }
    }

    /// `bytes` as a buffer (spilled at once when over `limit`).
    pub fn from_vec(bytes: Vec<u8>, limit: usize) -> std::io::Result<Spill> {
        let mut s = Spill { mem: bytes, ..Spill::new(limit) };
        if s.mem.len() > limit {
            s.spill()?;
        }
        Ok(s)
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.flushed + self.mem.len() as u64
    }

    /// Bytes held in memory.
    pub fn in_memory(&self) -> usize {
        self.mem.len()
    }

    /// Appends `bytes`.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() && self.mem.len() + bytes.len() > self.limit {
            self.spill()?;
        }
        self.mem.extend_from_slice(bytes);
        if self.file.is_some() && self.mem.len() >= TAIL {
            self.flush()?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `pos` (which must lie inside the buffer).
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> std::io::Result<()> {
        if pos < self.flushed {
            let n = buf.len().min((self.flushed - pos) as usize);
            let file = self.file.as_ref().expect("spill: flushed bytes without a file");
            file.read_exact_at(&mut buf[..n], pos)?;
            buf = &mut buf[n..];
            pos += n as u64;
        }
        if buf.is_empty() {
            return Ok(());
        }
        let at = (pos - self.flushed) as usize;
        let mem = self.mem.get(at..at + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(mem);
        Ok(())
    }

    /// Calls `f` with the bytes in order, in pieces of at most 256 KiB from the file (then what is in memory).
    /// A failed read of the file is a [`FormatError::Write`] (the file is scratch space of a write).
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> Result<(), FormatError>) -> Result<(), FormatError> {
        self.for_each_file_chunk(&mut f).map_err(FormatError::Write)??;
        if self.mem.is_empty() {
            return Ok(());
        }
        f(&self.mem)
    }

    /// Calls `f` with the bytes in the file, in pieces of at most [`TAIL`] bytes.
    fn for_each_file_chunk<E>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> std::io::Result<Result<(), E>> {
        if self.flushed == 0 {
            return Ok(Ok(()));
        }
        let mut buf = vec![0u8; TAIL.min(self.flushed as usize)];
        let mut pos = 0u64;
        while pos < self.flushed {
            let n = buf.len().min((self.flushed - pos) as usize);
            self.read_exact_at(&mut buf[..n], pos)?;
            if let Err(e) = f(&buf[..n]) {
                return Ok(Err(e));
            }
            pos += n as u64;
        }
        Ok(Ok(()))
    }

    /// The bytes as one slice when none went to the file.
    #[cfg(test)]
    pub fn as_slice(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(&self.mem[..])
    }

    /// Moves the bytes held so far to a new temporary file.
    fn spill(&mut self) -> std::io::Result<()> {
        self.file = Some(Arc::new(tempfile::tempfile()?));
        self.flush()
    }

    /// Writes the bytes held in memory to the file (copying the file first if a clone shares it).
    fn flush(&mut self) -> std::io::Result<()> {
        let Some(shared) = &mut self.file else { return Ok(()) };
        if Arc::get_mut(shared).is_none() {
            let copy = tempfile::tempfile()?;
            let source = Spill { mem: Vec::new(), file: Some(shared.clone()), flushed: self.flushed, limit: 0 };
            let mut pos = 0u64;
            source.for_each_file_chunk(|chunk| {
                copy.write_all_at(chunk, pos)?;
                pos += chunk.len() as u64;
                Ok::<_, std::io::Error>(())
            })??;
            *shared = Arc::new(copy);
        }
        shared.write_all_at(&self.mem, self.flushed)?;
        self.flushed += self.mem.len() as u64;
        self.mem = Vec::new();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &Spill) -> Vec<u8> {
        let mut out = Vec::new();
        s.for_each_chunk(|c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn appends_spill_past_the_limit_and_read_back_in_order_and_at_any_offset() {
        let mut s = Spill::new(1000);
        let mut expected = Vec::new();
        for i in 0..20_000u32 {
            let rec = [(i % 251) as u8; 77];
            s.append(&rec).unwrap();
            expected.extend_from_slice(&rec);
            assert!(s.in_memory() < TAIL + 77);
        }
        assert!(s.as_slice().is_none(), "spilled");
        assert_eq!(s.len(), expected.len() as u64);
        assert_eq!(bytes(&s), expected);
        // A read across the file and the bytes still in memory.
        let at = s.flushed - 100;
        let mut buf = [0u8; 300];
        s.read_exact_at(&mut buf, at).unwrap();
        assert_eq!(&buf[..], &expected[at as usize..at as usize + 300]);
        assert!(s.read_exact_at(&mut buf, s.len() - 10).is_err());

        let small = Spill::from_vec(vec![1, 2, 3], 10).unwrap();
        assert_eq!(small.as_slice(), Some(&[1u8, 2, 3][..]));
        let big = Spill::from_vec(expected[..5000].to_vec(), 1000).unwrap();
        assert_eq!(big.in_memory(), 0);
        assert_eq!(bytes(&big), &expected[..5000]);
    }

    #[test]
    fn a_clone_keeps_its_bytes_when_the_original_grows() {
        let mut a = Spill::new(10);
        a.append(&[7u8; 400_000]).unwrap();
        let snapshot = a.clone();
        a.append(&[8u8; 400_000]).unwrap();
        assert_eq!(bytes(&snapshot), vec![7u8; 400_000]);
        let mut all = vec![7u8; 400_000];
        all.extend(vec![8u8; 400_000]);
        assert_eq!(bytes(&a), all);
    }

    #[test]
    fn a_spilled_section_compresses_to_the_same_frame_as_its_bytes_in_one_piece() {
        use crate::writer::{compress_section, Raw, SECTION_TABLE_LOG};
        // Node-table-like records: repetitive, several MiB, so the pieces cut through zstd's blocks.
        let raw: Vec<u8> =
            (0..300_000u32).flat_map(|i| [i.to_le_bytes(), (i / 1000).to_le_bytes(), [1, 2, 3, 4]]).flatten().collect();
        let mut spilled = Spill::new(1000);
        for piece in raw.chunks(4093) {
            spilled.append(piece).unwrap();
        }
        assert!(spilled.as_slice().is_none());
        for level in [9, 15] {
            let whole = compress_section(Raw::Bytes(&raw), level, SECTION_TABLE_LOG).unwrap();
            assert_eq!(
                compress_section(Raw::Spilled(&spilled), level, SECTION_TABLE_LOG).unwrap(),
                whole,
                "level {level}"
            );
        }
    }
}
