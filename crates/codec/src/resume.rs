//! Resume points inside a gzip span ([`gzip_resume_point`]): a deflate block boundary that decoding can start
//! from instead of the span's checkpoint, with the window it needs, found by decoding the span once. A
//! recorded startup profile carries them (see `clip_node`'s profiles), so a later cold start fetches a file in
//! the middle of a span from near where it starts, not from the span's start; what such a decode yields is
//! checked against the span's tree root (`clip_format::SpanRoot`) before anything is served.

use crate::error::CodecError;
use crate::trim::trim_window;
use crate::zlib::{Flush, WINDOW_SIZE};
use crate::CheckpointRef;

/// Compressed bytes fetched past where decoding reached the wanted end (as [`crate::span_fetch_range`]'s
/// margin: a spare few bytes against off-by-one surprises).
const END_MARGIN: u64 = 8;

/// A place inside a gzip span where decoding can start over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// Where decoding from here starts, as an offset of the layer's decoded bytes.
    pub out_offset: u64,
    /// The first compressed byte decoding reads (the byte before holds `bits` bits of it first).
    pub in_offset: u64,
    pub bits: u8,
    /// The window decoding needs, trimmed (bytes it never uses zeroed, leading ones dropped).
    pub window: Vec<u8>,
    /// Where in the compressed stream the bytes needed to decode up to the asked end stop.
    pub in_end: u64,
}

/// The last deflate block boundary of the span that starts at `checkpoint` (`len` decoded bytes; `data` its
/// compressed bytes from `fetch_start` on) at or before the decoded offset `from`, with its window, and
/// where the compressed bytes needed to decode from there up to the decoded offset `to` end (offsets of the
/// layer's decoded bytes). `None` when no boundary lies past the span's start and at or before `from`
/// (within the span's first gzip member: a boundary in a later member is not looked for).
pub fn gzip_resume_point(
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    data: &[u8],
    len: u64,
    from: u64,
    to: u64,
) -> Result<Option<ResumePoint>, CodecError> {
    let (mut inflater, mut pos) = crate::gzip::resume(checkpoint, fetch_start, data)?;
    let error_at = |pos: usize, code: i32| CodecError::Inflate { offset: fetch_start + pos as u64, code };
    let from = from.saturating_sub(checkpoint.out_offset).min(len);
    let to = to.saturating_sub(checkpoint.out_offset).min(len);
    let mut scratch = vec![0u8; 4 * WINDOW_SIZE];
    let (mut produced, mut best, mut in_end) = (0u64, None, None);
    while produced < len {
        // Output stops right at `to` the first time, so the input consumed by then is what decoding needs.
        let room = match in_end {
            None if produced < to => ((to - produced) as usize).min(scratch.len()),
            _ => ((len - produced) as usize).min(scratch.len()),
        };
        let step = inflater.inflate(&data[pos..], &mut scratch[..room], Flush::Block);
        pos += step.consumed;
        produced += step.produced as u64;
        if in_end.is_none() && produced >= to {
            in_end = Some((fetch_start + pos as u64 + END_MARGIN).min(fetch_start + data.len() as u64));
        }
        match step.status {
            Ok(true) => break,
            Ok(false) if step.consumed == 0 && step.produced == 0 => {
                if pos == data.len() {
                    break;
                }
                return Err(error_at(pos, libz_rs_sys::Z_BUF_ERROR));
            }
            Ok(false) => {}
            Err(code) => return Err(error_at(pos, code)),
        }
        match inflater.block_boundary() {
            // A boundary with whole unused bytes held back is passed over (as the indexer's checkpoints).
            Some(unused) if produced > 0 && produced <= from && unused < 8 => {
                best = Some((produced, fetch_start + pos as u64, unused as u8, inflater.dictionary()));
            }
            _ => {}
        }
        if produced > from && in_end.is_some() {
            break;
        }
    }
    let Some((at, in_offset, bits, window)) = best else { return Ok(None) };
    let out_offset = checkpoint.out_offset + at;
    let point = CheckpointRef { out_offset, in_offset, bits, window: &window };
    let trimmed = trim_window(&point, fetch_start, data, (len - at).min(WINDOW_SIZE as u64));
    let window = trimmed.unwrap_or(window);
    let in_end = in_end.unwrap_or(fetch_start + data.len() as u64);
    Ok(Some(ResumePoint { out_offset, in_offset, bits, window, in_end }))
}
