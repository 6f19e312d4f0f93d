//! zstd: every frame boundary is a free checkpoint. [`ZstdIndexer`] decodes frame after frame and, at the
//! start of a frame, cuts a span once the open one has reached the span size; [`decode`] decodes from a
//! frame start across as many frames as the span holds. Skippable frames are skipped by zstd itself.

use std::io::Read;

use zstd::zstd_safe::{get_error_name, DCtx, InBuffer, OutBuffer};

use crate::error::CodecError;
use crate::input::Input;
use crate::reader::Fault;
use crate::spans::SpanRecorder;
use crate::CheckpointRef;

/// Streaming zstd decoder that records frame-boundary checkpoints.
pub(crate) struct ZstdIndexer {
    dctx: DCtx<'static>,
    /// Inside a frame (a checkpoint is impossible here).
    in_frame: bool,
    ended: bool,
}

impl ZstdIndexer {
    pub fn new(spans: &mut SpanRecorder) -> Self {
        spans.start(0);
        Self { dctx: DCtx::create(), in_frame: false, ended: false }
    }

    /// Decode into `out` (non-empty); `Ok(0)` only at the end of the stream, between frames.
    pub fn step<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        spans: &mut SpanRecorder,
    ) -> Result<usize, Fault> {
        loop {
            if self.ended {
                return Ok(0);
            }
            if !input.fill()? {
                if self.in_frame {
                    return Err(CodecError::UnexpectedEof { offset: input.pos() }.into());
                }
                self.ended = true;
                continue;
            }
            if !self.in_frame && spans.due() {
                // Taken lazily at the start of the next frame, so the stream never ends on an empty span.
                spans.cut(input.pos(), 0, Vec::new());
            }
            let mut src = InBuffer::around(input.data());
            let mut dst = OutBuffer::around(&mut *out);
            let hint = self
                .dctx
                .decompress_stream(&mut dst, &mut src)
                .map_err(|code| zstd_error(input.pos() + src.pos() as u64, code))?;
            let (consumed, produced) = (src.pos(), dst.pos());
            input.consume(consumed);
            spans.record(&out[..produced]);
            // 0 = a frame just ended and is fully flushed.
            self.in_frame = hint != 0;
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 {
                return Err(zstd_error(input.pos(), 0).into());
            }
        }
    }
}

fn zstd_error(offset: u64, code: usize) -> CodecError {
    CodecError::Zstd { offset, message: if code == 0 { "decoder made no progress" } else { get_error_name(code) } }
}

/// Fill `out` with the uncompressed bytes that start at frame boundary `checkpoint`. `data` holds the
/// compressed bytes from offset `fetch_start` on.
pub(crate) fn decode(
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    data: &[u8],
    out: &mut [u8],
) -> Result<(), CodecError> {
    let start = crate::decode::checkpoint_start(checkpoint, fetch_start, data)?;
    if checkpoint.bits != 0 {
        // A frame starts on a byte: a bit offset means the checkpoint is not one of ours.
        return Err(crate::decode::checkpoint_range(checkpoint, fetch_start, data));
    }
    let mut dctx = DCtx::create();
    let mut src = InBuffer::around(&data[start..]);
    let mut dst = OutBuffer::around(out);
    let expected = dst.capacity() as u64;
    while dst.pos() < dst.capacity() {
        let before = (src.pos(), dst.pos());
        dctx.decompress_stream(&mut dst, &mut src)
            .map_err(|code| zstd_error(fetch_start + (start + src.pos()) as u64, code))?;
        if (src.pos(), dst.pos()) == before {
            return Err(CodecError::Truncated { expected, got: dst.pos() as u64 });
        }
    }
    Ok(())
}
