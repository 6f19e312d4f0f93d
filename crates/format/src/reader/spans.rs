//! The span table of an open archive: span records ([`SpanView`]), each layer's slice of them, which span
//! holds an offset ([`Archive::find_span`]), which spans a file's bytes lie in ([`Archive::file_spans`]),
//! and the spans' checkpoint windows.

use std::ops::Range;

use super::Archive;
use crate::error::Corruption;
use crate::layout::*;
use crate::{DataRef, Digest, FormatError, LayerIndex, SpanId, SpanIds};

/// One span record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanView {
    pub out_offset: u64,
    pub in_offset: u64,
    pub bits: u8,
    /// sha256 of the span's uncompressed bytes.
    pub digest: Digest,
    /// Offset of the compressed window inside the `WIND` section, and its length (0 = no window).
    pub window_off: u64,
    pub window_len: u32,
}

/// The part of one span that a byte range of a file covers: see [`Archive::file_spans`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSlice {
    pub span: SpanId,
    /// The span's uncompressed range in its layer.
    pub span_range: Range<u64>,
    /// The covered bytes, relative to the span's start.
    pub within: Range<u64>,
}

impl Archive {
    /// Total number of span records (all layers).
    pub fn span_count(&self) -> usize {
        self.bytes(&self.spans).len() / SPAN_LEN
    }

    /// Span record `span` of the whole table.
    pub fn span(&self, span: SpanId) -> Result<SpanView, FormatError> {
        let i = span.index();
        let rec = i
            .checked_add(1)
            .and_then(|end| self.bytes(&self.spans).get(i * SPAN_LEN..end.checked_mul(SPAN_LEN)?))
            .ok_or(Corruption::SpanRange { span, count: self.span_count() })?;
        let mut r = Le(rec);
        let (out_offset, in_offset, window_off, window_len, bits) = (r.u64(), r.u64(), r.u64(), r.u32(), r.u8());
        r.skip(3);
        Ok(SpanView { out_offset, in_offset, bits, digest: Digest::from_sha256(r.array32()), window_off, window_len })
    }

    /// The span records of layer `layer`.
    pub fn layer_spans(&self, layer: LayerIndex) -> Result<SpanIds, FormatError> {
        let layers = &self.meta.layers;
        let l = layers.get(layer.index()).ok_or(Corruption::LayerRange { layer, count: layers.len() })?;
        Ok(SpanIds { start: l.first_span, end: SpanId(l.first_span.0 + l.span_count) })
    }

    /// The span of `layer` holding uncompressed `offset` (binary search).
    pub fn find_span(&self, layer: LayerIndex, offset: u64) -> Result<SpanId, FormatError> {
        let range = self.layer_spans(layer)?;
        let (mut lo, mut hi) = (range.start.0, range.end.0);
        if lo == hi {
            return Err(Corruption::NoSpans { layer }.into());
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.span(SpanId(mid))?.out_offset <= offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(SpanId(lo))
    }

    /// Uncompressed range `[start, end)` covered by span `span` of `layer`.
    pub fn span_range(&self, layer: LayerIndex, span: SpanId) -> Result<Range<u64>, FormatError> {
        let range = self.layer_spans(layer)?;
        let start = self.span(span)?.out_offset;
        let end = if span.next() < range.end {
            self.span(span.next())?.out_offset
        } else {
            self.meta.layers[layer.index()].uncompressed_size
        };
        if end < start {
            return Err(Corruption::SpanBackwards { span, start, end }.into());
        }
        Ok(start..end)
    }

    /// The spans holding bytes `range` (relative to the file's start, clipped to its size) of the file at
    /// `data`, in order, each with the part of it the range covers.
    pub fn file_spans(
        &self,
        data: DataRef,
        range: Range<u64>,
    ) -> impl Iterator<Item = Result<SpanSlice, FormatError>> + '_ {
        let overflow = Corruption::DataOverflow { layer: data.layer, offset: data.offset, size: data.size };
        let bounds = data.offset.checked_add(data.size).map(|_| {
            let end = range.end.min(data.size);
            (data.offset + range.start.min(end), data.offset + end)
        });
        let (mut pos, stop, mut failed) = match bounds {
            Some((pos, stop)) => (pos, stop, None),
            None => (0, 0, Some(overflow)),
        };
        std::iter::from_fn(move || {
            if let Some(e) = failed.take() {
                return Some(Err(e.into()));
            }
            if pos >= stop {
                return None;
            }
            let slice = self.span_at(data.layer, pos, stop);
            match &slice {
                Ok(s) => pos = s.span_range.start + s.within.end,
                Err(_) => pos = stop,
            }
            Some(slice)
        })
    }

    /// The span of `layer` holding `pos`, and the part of it up to `stop`.
    fn span_at(&self, layer: LayerIndex, pos: u64, stop: u64) -> Result<SpanSlice, FormatError> {
        let span = self.find_span(layer, pos)?;
        let span_range = self.span_range(layer, span)?;
        if span_range.start > pos || span_range.end <= pos {
            return Err(Corruption::SpanGap { layer, span, offset: pos }.into());
        }
        let within = pos - span_range.start..stop.min(span_range.end) - span_range.start;
        Ok(SpanSlice { span, span_range, within })
    }

    /// Absolute file range of span `span`'s compressed window (None when it has none).
    pub fn window_location(&self, span: SpanId) -> Result<Option<Range<u64>>, FormatError> {
        let s = self.span(span)?;
        if s.window_len == 0 {
            return Ok(None);
        }
        let wind = self.section(SEC_WIND).ok_or(FormatError::MissingSection("WIND"))?;
        let end = s.window_off.checked_add(u64::from(s.window_len)).filter(|&end| end <= wind.stored_len);
        let Some(end) = end else {
            let (offset, len, section_len) = (s.window_off, s.window_len, wind.stored_len);
            return Err(Corruption::WindowRange { span, offset, len, section_len }.into());
        };
        Ok(Some(wind.offset + s.window_off..wind.offset + end))
    }

    /// Decompresses a window fetched from [`Archive::window_location`].
    pub fn decode_window(compressed: &[u8]) -> Result<Vec<u8>, FormatError> {
        Ok(zstd::bulk::decompress(compressed, crate::MAX_WINDOW).map_err(Corruption::Window)?)
    }

    /// The window of span `span` from the local file (empty when it has none).
    pub fn window(&self, span: SpanId) -> Result<Vec<u8>, FormatError> {
        match self.window_location(span)? {
            None => Ok(Vec::new()),
            Some(r) => Self::decode_window(self.local_range(r)?),
        }
    }
}
