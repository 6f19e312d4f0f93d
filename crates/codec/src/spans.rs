//! [`SpanRecorder`]: turns the uncompressed output and the checkpoints a decoder offers into [`Span`]s with
//! digests: the sha256 of each span's bytes, and the root of its leaves' digests ([`SpanRoot`]).

use std::collections::VecDeque;

use clip_format::{LeafDigest, SpanRoot, TREE_LEAF};
use sha2::{Digest as _, Sha256};

use crate::{Checkpoint, Span};

/// Hashes output as it is produced and closes a span at each checkpoint.
pub(crate) struct SpanRecorder {
    span_size: u64,
    done: Vec<Span>,
    /// Start of the open span; `None` until the decoder knows where the first one starts.
    current: Option<Checkpoint>,
    hasher: Sha256,
    /// The open span's leaves: those done, and the one being hashed (`leaf_len` bytes so far).
    leaves: Vec<LeafDigest>,
    leaf: Sha256,
    leaf_len: u64,
    out_pos: u64,
    /// Checkpoints (by `out_offset`, ascending) whose window will still be replaced; spans from the first of
    /// them on are held back from [`SpanRecorder::take_done`].
    held: VecDeque<u64>,
}

impl SpanRecorder {
    /// `span_size` 0 is treated as 1.
    pub fn new(span_size: u64) -> Self {
        Self {
            span_size: span_size.max(1),
            done: Vec::new(),
            current: None,
            hasher: Sha256::new(),
            leaves: Vec::new(),
            leaf: Sha256::new(),
            leaf_len: 0,
            out_pos: 0,
            held: VecDeque::new(),
        }
    }

    /// Open the first span (at uncompressed offset 0).
    pub fn start(&mut self, in_offset: u64) {
        debug_assert!(self.current.is_none() && self.out_pos == 0);
        self.current = Some(Checkpoint { out_offset: 0, in_offset, bits: 0, window: Vec::new() });
    }

    /// Account for uncompressed output.
    pub fn record(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.hasher.update(data);
        self.out_pos += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let take = ((TREE_LEAF - self.leaf_len) as usize).min(rest.len());
            self.leaf.update(&rest[..take]);
            self.leaf_len += take as u64;
            rest = &rest[take..];
            if self.leaf_len == TREE_LEAF {
                self.leaves.push(std::mem::take(&mut self.leaf).finalize().into());
                self.leaf_len = 0;
            }
        }
    }

    /// Uncompressed bytes produced so far.
    pub fn out_pos(&self) -> u64 {
        self.out_pos
    }

    /// Aim spans at `span_size` bytes from now on, the open one included (0 is treated as 1).
    pub fn set_span_size(&mut self, span_size: u64) {
        self.span_size = span_size.max(1);
    }

    /// Bytes left before the open span reaches `span_size` (0 when a checkpoint is due).
    pub fn room(&self) -> u64 {
        let start = self.current.as_ref().map_or(0, |c| c.out_offset);
        self.span_size.saturating_sub(self.out_pos - start)
    }

    /// Whether the open span has reached `span_size`, so the next possible checkpoint should be taken.
    pub fn due(&self) -> bool {
        self.current.is_some() && self.room() == 0
    }

    /// Close the open span here and open the next one at this checkpoint.
    pub fn cut(&mut self, in_offset: u64, bits: u8, window: Vec<u8>) {
        let next = Checkpoint { out_offset: self.out_pos, in_offset, bits, window };
        tracing::trace!(out_offset = next.out_offset, in_offset, bits, window = next.window.len(), "checkpoint");
        if let Some(prev) = self.current.replace(next) {
            self.close(prev);
        }
    }

    /// Keep the checkpoint just cut (at the current output position) out of [`SpanRecorder::take_done`]
    /// until [`SpanRecorder::set_window`] gives its final window.
    pub fn hold(&mut self) {
        self.held.push_back(self.out_pos);
    }

    /// Replace the window of the held checkpoint at `out_offset` and release it.
    pub fn set_window(&mut self, out_offset: u64, window: Vec<u8>) {
        self.held.retain(|&o| o != out_offset);
        let checkpoint = match &mut self.current {
            Some(c) if c.out_offset == out_offset => Some(c),
            _ => self.done.iter_mut().rev().map(|s| &mut s.checkpoint).find(|c| c.out_offset == out_offset),
        };
        if let Some(checkpoint) = checkpoint {
            checkpoint.window = window;
        }
    }

    fn close(&mut self, checkpoint: Checkpoint) {
        let digest = crate::Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
        if self.leaf_len > 0 {
            self.leaves.push(std::mem::take(&mut self.leaf).finalize().into());
            self.leaf_len = 0;
        }
        let len = self.out_pos - checkpoint.out_offset;
        let root = SpanRoot::of_leaves(len, &std::mem::take(&mut self.leaves));
        self.done.push(Span { len, checkpoint, digest, root });
    }

    /// Spans closed so far (removed from the recorder).
    pub fn take_done(&mut self) -> Vec<Span> {
        let ready = match self.held.front() {
            Some(&held) => self.done.partition_point(|s| s.checkpoint.out_offset < held),
            None => self.done.len(),
        };
        self.done.drain(..ready).collect()
    }

    /// Close the last span and return every span not taken yet. A trailing empty span is dropped unless
    /// it is the layer's only one.
    pub fn finish(mut self) -> Vec<Span> {
        if let Some(last) = self.current.take() {
            let empty = self.out_pos == last.out_offset;
            if !empty || (self.done.is_empty() && last.out_offset == 0) {
                self.close(last);
            }
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_tile_output_and_hash_their_bytes() {
        let mut rec = SpanRecorder::new(4);
        rec.start(10);
        rec.record(b"abc");
        assert!(!rec.due());
        assert_eq!(rec.room(), 1);
        rec.record(b"de");
        assert!(rec.due());
        rec.cut(20, 3, b"abcde".to_vec());
        rec.record(b"fg");
        let spans = rec.finish();
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].checkpoint.out_offset, spans[0].len), (0, 5));
        assert_eq!(spans[0].digest, crate::Digest::of(b"abcde"));
        assert_eq!(spans[1].checkpoint.in_offset, 20);
        assert_eq!((spans[1].checkpoint.out_offset, spans[1].len), (5, 2));
        assert_eq!(spans[1].digest, crate::Digest::of(b"fg"));
        assert_eq!((spans[0].root, spans[1].root), (SpanRoot::of(b"abcde"), SpanRoot::of(b"fg")));
    }

    #[test]
    fn trailing_empty_span_is_dropped_but_an_empty_layer_has_one() {
        let mut rec = SpanRecorder::new(2);
        rec.start(0);
        rec.record(b"xy");
        rec.cut(2, 0, Vec::new());
        assert_eq!(rec.finish().len(), 1);

        let mut empty = SpanRecorder::new(2);
        empty.start(0);
        let spans = empty.finish();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].len, 0);
        assert_eq!(spans[0].digest, crate::Digest::of(b""));
    }
}
