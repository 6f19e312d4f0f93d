//! [`IndexingReader`]: the indexing half. A `Read` adapter that decompresses a layer stream and records
//! checkpoints and span digests on the way.

use std::io::{self, Read};

use crate::error::CodecError;
use crate::gzip::GzipIndexer;
use crate::input::Input;
use crate::spans::SpanRecorder;
use crate::zstd_frames::ZstdIndexer;
use crate::{Compression, LayerSummary, Span};

/// Compressed input buffer size.
const INPUT_SIZE: usize = 64 * 1024;
/// Caller buffers at least this large are decoded into directly; smaller reads go through a staging buffer
/// so the decompressor still works in large chunks.
const DIRECT_MIN: usize = 32 * 1024;
/// Staging buffer size for small reads.
const STAGE_SIZE: usize = 128 * 1024;

/// Why a decoder step failed: the wrapped reader (passed through as is) or the data.
pub(crate) enum Fault {
    Io(io::Error),
    Codec(CodecError),
}

impl From<io::Error> for Fault {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<CodecError> for Fault {
    fn from(err: CodecError) -> Self {
        Self::Codec(err)
    }
}

enum Decoder {
    Gzip(Box<GzipIndexer>),
    Zstd(Box<ZstdIndexer>),
    Raw,
}

enum State {
    Running,
    Ended,
    Failed(CodecError),
}

/// Everything but the staging buffer, so the two can be borrowed separately.
struct Core<R> {
    input: Input<R>,
    decoder: Decoder,
    spans: SpanRecorder,
    state: State,
    /// An error met after a read had some output: handed to the next read.
    deferred: Option<io::Error>,
}

/// Wraps a compressed layer stream; [`Read`] yields the uncompressed bytes while checkpoints and span
/// digests are recorded. Read it to the end (until `read` returns 0), then call [`IndexingReader::finish`].
///
/// Errors in the data surface from `read` as [`io::Error`]s of kind [`io::ErrorKind::InvalidData`] wrapping
/// a [`CodecError`] (get it back with `err.into_inner()` + `downcast`); once one happened every later read
/// fails the same way. Errors of the wrapped reader pass through unchanged and may be retried.
pub struct IndexingReader<R: Read> {
    core: Core<R>,
    staged: Vec<u8>,
    staged_pos: usize,
    staged_len: usize,
}

impl<R: Read> IndexingReader<R> {
    /// Index `inner`, compressed as `compression`, cutting spans of at least `span_size` uncompressed
    /// bytes (exactly `span_size` for [`Compression::None`]; 0 is treated as 1).
    pub fn new(inner: R, compression: Compression, span_size: u64) -> Self {
        let mut spans = SpanRecorder::new(span_size);
        let mut state = State::Running;
        let (decoder, input_size) = match compression {
            Compression::Gzip => match GzipIndexer::new() {
                Ok(gzip) => (Decoder::Gzip(Box::new(gzip)), INPUT_SIZE),
                Err(err) => {
                    state = State::Failed(err);
                    (Decoder::Raw, 0)
                }
            },
            Compression::Zstd => (Decoder::Zstd(Box::new(ZstdIndexer::new(&mut spans))), INPUT_SIZE),
            Compression::None => {
                spans.start(0);
                (Decoder::Raw, 0)
            }
        };
        Self {
            core: Core { input: Input::new(inner, input_size), decoder, spans, state, deferred: None },
            staged: Vec::new(),
            staged_pos: 0,
            staged_len: 0,
        }
    }

    /// Aim spans at `span_size` uncompressed bytes from here on, the open one included: an indexer that
    /// knows what the stream holds spends checkpoints where reads will be. The decoder has filled the last
    /// read (or the 128 KiB staging buffer of small reads), so the new size applies from the end of that,
    /// the same place whatever way the compressed input arrives.
    pub fn set_span_size(&mut self, span_size: u64) {
        self.core.spans.set_span_size(span_size);
    }

    /// Compressed bytes consumed by the decoder so far (for a decompression-ratio guard).
    pub fn compressed_pos(&self) -> u64 {
        self.core.input.pos()
    }

    /// Uncompressed bytes decoded so far. May run ahead of what `read` has returned by up to 128 KiB of
    /// internally staged output.
    pub fn uncompressed_pos(&self) -> u64 {
        self.core.spans.out_pos()
    }

    /// Remove and return the spans completed so far, so a caller indexing a huge layer with small spans can
    /// write their windows out instead of keeping them all in memory. [`IndexingReader::finish`] then
    /// returns only the spans not taken.
    pub fn take_spans(&mut self) -> Vec<Span> {
        self.core.spans.take_done()
    }

    /// After `read` returned 0: the spans (those not already taken) and the stream sizes. Fails with
    /// [`CodecError::Incomplete`] if the stream was not read to its end, or with the error a read hit.
    pub fn finish(self) -> Result<LayerSummary, CodecError> {
        let core = self.core;
        match core.state {
            State::Ended => {
                let compressed_size = core.input.pos();
                let uncompressed_size = core.spans.out_pos();
                let spans = core.spans.finish();
                tracing::debug!(compressed_size, uncompressed_size, spans = spans.len(), "layer indexed");
                Ok(LayerSummary { spans, compressed_size, uncompressed_size })
            }
            State::Failed(err) => Err(err),
            State::Running => {
                Err(CodecError::Incomplete { compressed_pos: core.input.pos(), uncompressed_pos: core.spans.out_pos() })
            }
        }
    }
}

impl<R: Read> Core<R> {
    /// Decode into `out` (non-empty) until it is full or the stream ends; 0 only at the end. How far the
    /// decoder runs ahead of the caller's reads, and so where a [`IndexingReader::set_span_size`] between
    /// reads takes effect, then never depends on how the compressed input arrived: the same layer gives the
    /// same index over any network. An error after some output ends the fill early and is returned by the
    /// next read.
    fn decode_full(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(err) = self.deferred.take() {
            return Err(err);
        }
        let mut filled = 0;
        while filled < out.len() {
            match self.decode(&mut out[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if filled > 0 => {
                    self.deferred = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(filled)
    }

    /// Decode into `out` (non-empty); 0 only at the end of the stream.
    fn decode(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Running => {}
            State::Ended => return Ok(0),
            State::Failed(err) => return Err(err.clone().into()),
        }
        let result = match &mut self.decoder {
            Decoder::Gzip(gzip) => gzip.step(&mut self.input, out, &mut self.spans),
            Decoder::Zstd(zstd) => zstd.step(&mut self.input, out, &mut self.spans),
            Decoder::Raw => raw_step(&mut self.input, out, &mut self.spans),
        };
        match result {
            Ok(0) => {
                self.state = State::Ended;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(Fault::Io(err)) => Err(err),
            Err(Fault::Codec(err)) => {
                self.state = State::Failed(err.clone());
                Err(err.into())
            }
        }
    }
}

/// Uncompressed input: pass bytes through, cutting spans at exact multiples of the span size.
fn raw_step<R: Read>(input: &mut Input<R>, out: &mut [u8], spans: &mut SpanRecorder) -> Result<usize, Fault> {
    if spans.due() {
        spans.cut(input.pos(), 0, Vec::new());
    }
    let cap = usize::try_from(spans.room()).map_or(out.len(), |room| room.min(out.len()));
    let n = input.read_direct(&mut out[..cap])?;
    spans.record(&out[..n]);
    Ok(n)
}

impl<R: Read> Read for IndexingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.staged_pos == self.staged_len {
            if buf.len() >= DIRECT_MIN || matches!(self.core.decoder, Decoder::Raw) {
                return self.core.decode_full(buf);
            }
            if self.staged.is_empty() {
                self.staged = vec![0; STAGE_SIZE];
            }
            self.staged_len = self.core.decode_full(&mut self.staged)?;
            self.staged_pos = 0;
        }
        let n = buf.len().min(self.staged_len - self.staged_pos);
        buf[..n].copy_from_slice(&self.staged[self.staged_pos..self.staged_pos + n]);
        self.staged_pos += n;
        Ok(n)
    }
}
