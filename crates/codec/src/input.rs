//! [`Input`]: the compressed side of an [`crate::IndexingReader`], a fixed buffer over the wrapped reader
//! that knows the compressed offset of every byte it hands out.

use std::io::{self, Read};

/// Buffered compressed input with position tracking.
pub(crate) struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Compressed offset of `buf[start]`: bytes consumed by the decoder so far.
    pos: u64,
    eof: bool,
    /// The last byte consumed from the buffer (a gzip checkpoint's bit offset points into it).
    last: Option<u8>,
}

impl<R: Read> Input<R> {
    /// `capacity` 0 is fine for readers that only use [`Input::read_direct`].
    pub fn new(inner: R, capacity: usize) -> Self {
        Self { inner, buf: vec![0; capacity].into_boxed_slice(), start: 0, end: 0, pos: 0, eof: false, last: None }
    }

    /// Buffered bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Mark `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        let n = n.min(self.end - self.start);
        if n > 0 {
            self.last = Some(self.buf[self.start + n - 1]);
        }
        self.start += n;
        self.pos += n as u64;
    }

    /// The byte right before [`Input::pos`], if it went through the buffer.
    pub fn last_consumed(&self) -> Option<u8> {
        self.last
    }

    /// Compressed offset of the next unconsumed byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Make sure some bytes are buffered; `Ok(false)` at the end of the stream.
    pub fn fill(&mut self) -> io::Result<bool> {
        if self.start < self.end {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.start = 0;
        self.end = 0;
        let n = read_retrying(&mut self.inner, &mut self.buf)?;
        self.end = n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// Read straight into `out`, bypassing the buffer (which must be empty); `Ok(0)` at the end.
    pub fn read_direct(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            let n = self.data().len().min(out.len());
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.consume(n);
            return Ok(n);
        }
        if self.eof || out.is_empty() {
            return Ok(0);
        }
        let n = read_retrying(&mut self.inner, out)?;
        self.pos += n as u64;
        self.eof = n == 0;
        Ok(n)
    }
}

fn read_retrying<R: Read>(inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A reader claiming more than the buffer holds is buggy; never index past the buffer.
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) => return Err(e),
        }
    }
}
