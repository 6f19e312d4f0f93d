//! gzip, zran style: indexing ([`GzipIndexer`]) takes checkpoints at deflate block boundaries and checks
//! every member's trailer; [`decode`] resumes raw inflate at a checkpoint (prime the leftover bits, preset
//! the window) and follows the stream across member boundaries.

use std::io::Read;

use crate::error::CodecError;
use crate::gzip_header::{HeaderParser, Trailer, TRAILER_LEN};
use crate::input::Input;
use crate::reader::Fault;
use crate::spans::SpanRecorder;
use crate::trim::trim_window;
use crate::zlib::{crc32, Flush, RawInflater, WINDOW_SIZE};
use crate::CheckpointRef;

enum State {
    Header(HeaderParser),
    Deflate,
    Trailer(Trailer),
    End,
}

/// Streaming gzip decoder that records checkpoints.
pub(crate) struct GzipIndexer {
    inflater: RawInflater,
    state: State,
    /// Compressed offset of the current member's header.
    member_start: u64,
    member_crc: u32,
    member_len: u64,
    members: u64,
    /// Checkpoints whose windows get trimmed once the 32 KiB of output after them are decoded.
    trims: Vec<PendingTrim>,
}

/// A checkpoint waiting for the output that decides which of its window bytes are needed.
struct PendingTrim {
    out_offset: u64,
    in_offset: u64,
    bits: u8,
    window: Vec<u8>,
    /// Compressed offset of `data[0]`.
    data_start: u64,
    /// Compressed bytes from `data_start` on, as consumed; `None` once more than [`MAX_TRIM_INPUT`] were
    /// needed (a stream of empty blocks), and the window then stays whole.
    data: Option<Vec<u8>>,
}

/// Most compressed bytes kept to trim one window. 32 KiB of output take at most ~33 KiB of deflate input
/// (stored blocks); only a hostile stream (empty blocks by the million) needs more.
const MAX_TRIM_INPUT: usize = 256 << 10;

impl GzipIndexer {
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            inflater: RawInflater::new().map_err(|code| CodecError::ZlibInit { code })?,
            state: State::Header(HeaderParser::new(0)),
            member_start: 0,
            member_crc: 0,
            member_len: 0,
            members: 0,
            trims: Vec::new(),
        })
    }

    /// Decode into `out` (non-empty); `Ok(0)` only at the verified end of the last member.
    pub fn step<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        spans: &mut SpanRecorder,
    ) -> Result<usize, Fault> {
        loop {
            match &mut self.state {
                State::End => return Ok(0),
                State::Header(parser) => {
                    if !input.fill()? {
                        if parser.is_fresh() && self.members > 0 {
                            tracing::debug!(members = self.members, "end of gzip stream");
                            self.finish_trims(spans, true);
                            self.state = State::End;
                            continue;
                        }
                        return Err(CodecError::UnexpectedEof { offset: input.pos() }.into());
                    }
                    let (used, done) = parser.feed(input.data())?;
                    consume(&mut self.trims, input, used);
                    if done {
                        self.member_start = parser.start();
                        self.begin_member(input.pos(), spans)?;
                    }
                }
                State::Deflate => {
                    if !input.fill()? {
                        return Err(CodecError::UnexpectedEof { offset: input.pos() }.into());
                    }
                    let step = self.inflater.inflate(input.data(), out, Flush::Block);
                    consume(&mut self.trims, input, step.consumed);
                    let produced = &out[..step.produced];
                    self.member_crc = crc32(self.member_crc, produced);
                    self.member_len += produced.len() as u64;
                    spans.record(produced);
                    match step.status {
                        Ok(true) => self.state = State::Trailer(Trailer::default()),
                        Ok(false) if step.consumed == 0 && step.produced == 0 => {
                            // Input and output were both available: zlib cannot move, the data is bad.
                            return Err(inflate_error(input.pos(), libz_rs_sys::Z_BUF_ERROR).into());
                        }
                        Ok(false) => self.maybe_checkpoint(input.pos(), input.last_consumed(), spans),
                        Err(code) => return Err(inflate_error(input.pos(), code).into()),
                    }
                    if step.produced > 0 {
                        self.finish_trims(spans, false);
                        return Ok(step.produced);
                    }
                }
                State::Trailer(trailer) => {
                    if !input.fill()? {
                        return Err(CodecError::UnexpectedEof { offset: input.pos() }.into());
                    }
                    let used = trailer.feed(input.data());
                    consume(&mut self.trims, input, used);
                    if let Some((crc, isize)) = trailer.value() {
                        // ISIZE is the length modulo 2^32.
                        if crc != self.member_crc || isize != self.member_len as u32 {
                            return Err(CodecError::Crc { member_offset: self.member_start }.into());
                        }
                        self.members += 1;
                        self.state = State::Header(HeaderParser::new(input.pos()));
                    }
                }
            }
        }
    }

    fn begin_member(&mut self, data_start: u64, spans: &mut SpanRecorder) -> Result<(), CodecError> {
        self.inflater.reset().map_err(|code| inflate_error(data_start, code))?;
        if self.members == 0 {
            spans.start(data_start);
        }
        self.member_crc = 0;
        self.member_len = 0;
        self.state = State::Deflate;
        Ok(())
    }

    /// After an `inflate(Z_BLOCK)`: take a checkpoint if we stopped before a (non-final) block and the span
    /// is long enough.
    fn maybe_checkpoint(&mut self, consumed: u64, last: Option<u8>, spans: &mut SpanRecorder) {
        let Some(unused) = self.inflater.block_boundary() else {
            return;
        };
        if !spans.due() {
            return;
        }
        // zlib keeps < 8 unused bits here; should more be held, whole bytes step the offset back.
        let in_offset = consumed - u64::from(unused / 8);
        let bits = (unused % 8) as u8;
        let window = self.inflater.dictionary();
        // Trimming replays the compressed bytes from the checkpoint on (and the byte holding its first bits);
        // should zlib ever hold whole bytes back, those are gone and the window stays whole.
        let prefix = match (unused / 8, bits, last) {
            (0, 0, _) => Some(Vec::new()),
            (0, _, Some(byte)) => Some(vec![byte]),
            _ => None,
        };
        let out_offset = spans.out_pos();
        spans.cut(in_offset, bits, window.clone());
        if let (Some(data), false) = (prefix, window.is_empty()) {
            spans.hold();
            let data_start = in_offset - data.len() as u64;
            self.trims.push(PendingTrim { out_offset, in_offset, bits, window, data_start, data: Some(data) });
        }
    }

    /// Trim the windows whose following 32 KiB of output are decoded (all of them at the end of the stream).
    fn finish_trims(&mut self, spans: &mut SpanRecorder, ended: bool) {
        let out_pos = spans.out_pos();
        let ready = self.trims.iter().take_while(|t| ended || out_pos - t.out_offset >= WINDOW_SIZE as u64).count();
        for trim in self.trims.drain(..ready) {
            let checkpoint = CheckpointRef {
                out_offset: trim.out_offset,
                in_offset: trim.in_offset,
                bits: trim.bits,
                window: &trim.window,
            };
            let trimmed = trim
                .data
                .as_ref()
                .and_then(|data| trim_window(&checkpoint, trim.data_start, data, out_pos - trim.out_offset));
            spans.set_window(trim.out_offset, trimmed.unwrap_or(trim.window));
        }
    }
}

/// Consume `n` buffered bytes, keeping a copy for every pending trim.
fn consume<R: Read>(trims: &mut [PendingTrim], input: &mut Input<R>, n: usize) {
    for trim in trims.iter_mut() {
        match &mut trim.data {
            Some(data) if data.len() + n <= MAX_TRIM_INPUT => data.extend_from_slice(&input.data()[..n]),
            _ => trim.data = None,
        }
    }
    input.consume(n);
}

fn inflate_error(offset: u64, code: i32) -> CodecError {
    CodecError::Inflate { offset, code }
}

/// A raw inflater ready to go on from `checkpoint` (its leftover bits primed, its window preset), and where
/// in `data` (the compressed bytes from offset `fetch_start` on) it goes on reading.
pub(crate) fn resume(
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    data: &[u8],
) -> Result<(RawInflater, usize), CodecError> {
    let pos = crate::decode::checkpoint_start(checkpoint, fetch_start, data)?;
    let mut inflater = RawInflater::new().map_err(|code| CodecError::ZlibInit { code })?;
    let error_at = |code: i32| inflate_error(fetch_start + pos as u64, code);
    if checkpoint.bits > 0 {
        if checkpoint.bits > 7 || pos == 0 {
            return Err(crate::decode::checkpoint_range(checkpoint, fetch_start, data));
        }
        let value = data[pos - 1] >> (8 - checkpoint.bits);
        inflater.prime(checkpoint.bits, u32::from(value)).map_err(error_at)?;
    }
    if !checkpoint.window.is_empty() {
        inflater.set_dictionary(checkpoint.window).map_err(error_at)?;
    }
    Ok((inflater, pos))
}

enum DecodeState {
    Deflate,
    Trailer(usize),
    Header(HeaderParser),
}

/// Fill `out` with the uncompressed bytes that start at `checkpoint`. `data` holds the compressed bytes
/// from offset `fetch_start` on.
pub(crate) fn decode(
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    data: &[u8],
    out: &mut [u8],
) -> Result<(), CodecError> {
    let (mut inflater, mut pos) = resume(checkpoint, fetch_start, data)?;
    let error_at = |pos: usize, code: i32| inflate_error(fetch_start + pos as u64, code);
    let mut produced = 0;
    let mut state = DecodeState::Deflate;
    let expected = out.len() as u64;
    let truncated = |got: usize| CodecError::Truncated { expected, got: got as u64 };
    while produced < out.len() {
        let rest = &data[pos..];
        match &mut state {
            DecodeState::Deflate => {
                let step = inflater.inflate(rest, &mut out[produced..], Flush::None);
                pos += step.consumed;
                produced += step.produced;
                match step.status {
                    Ok(true) => state = DecodeState::Trailer(0),
                    Ok(false) if step.consumed == 0 && step.produced == 0 => {
                        return Err(if pos == data.len() {
                            truncated(produced)
                        } else {
                            error_at(pos, libz_rs_sys::Z_BUF_ERROR)
                        });
                    }
                    Ok(false) => {}
                    Err(code) => return Err(error_at(pos, code)),
                }
            }
            DecodeState::Trailer(seen) => {
                if rest.is_empty() {
                    return Err(truncated(produced));
                }
                let take = (TRAILER_LEN - *seen).min(rest.len());
                pos += take;
                *seen += take;
                if *seen == TRAILER_LEN {
                    state = DecodeState::Header(HeaderParser::new(fetch_start + pos as u64));
                }
            }
            DecodeState::Header(parser) => {
                if rest.is_empty() {
                    return Err(truncated(produced));
                }
                let (used, done) = parser.feed(rest)?;
                pos += used;
                if done {
                    inflater.reset().map_err(|code| error_at(pos, code))?;
                    state = DecodeState::Deflate;
                }
            }
        }
    }
    Ok(())
}
