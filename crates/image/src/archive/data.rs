//! The data stream of a data-carrying archive: file bytes back to back, cut into spans of `span_size`
//! uncompressed bytes, each with its sha256 and, with zstd, each an independent frame (so any span decodes
//! on its own from its `in_offset`). Spans are hashed, compressed and written on a second thread while the
//! walker reads the next files; memory stays at a few spans whatever the tree size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use clip_format::{SpanSpec, WindowRef};
use sha2::{Digest as _, Sha256};

/// How span bytes are stored in the data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataCompression {
    /// Raw bytes: a span's stored range is its uncompressed range.
    #[default]
    None,
    /// Every span one zstd frame at this level.
    Zstd { level: i32 },
}

/// What the writer thread produced.
pub(crate) struct Written {
    pub spans: Vec<SpanSpec>,
    /// Bytes in the data section.
    pub stored: u64,
    /// sha256 of the data section as stored.
    pub digest: [u8; 32],
}

/// Feeds file bytes to the writer thread a span at a time.
pub(crate) struct DataWriter {
    span_size: usize,
    buf: Vec<u8>,
    /// Uncompressed bytes so far.
    pos: u64,
    tx: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<std::io::Result<Written>>>,
}

impl DataWriter {
    /// Writes the data section into `out` (from its current position).
    pub fn new(out: File, span_size: u64, compression: DataCompression) -> DataWriter {
        let span_size = usize::try_from(span_size.max(1)).unwrap_or(usize::MAX);
        // Two full spans may wait while the third is being filled.
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        let worker = std::thread::Builder::new()
            .name("clip-archive-data".into())
            .spawn(move || write_spans(rx, out, compression))
            .ok();
        DataWriter { span_size, buf: Vec::with_capacity(span_size), pos: 0, tx: Some(tx), worker }
    }

    /// Uncompressed bytes so far: the offset the next file starts at.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Appends `data` to the stream.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let take = (self.span_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.pos += take as u64;
            if self.buf.len() == self.span_size {
                self.send()?;
            }
        }
        Ok(())
    }

    fn send(&mut self) -> std::io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.span_size));
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(full).is_ok());
        if !sent {
            // The writer thread stopped: its error says why.
            return Err(self.join().err().unwrap_or_else(|| std::io::Error::other("the data writer thread stopped")));
        }
        Ok(())
    }

    fn join(&mut self) -> std::io::Result<Written> {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w.join().map_err(|_| std::io::Error::other("the data writer thread panicked"))?,
            None => Err(std::io::Error::other("the data writer thread could not start")),
        }
    }

    /// Writes the last, partial span and waits for the writer.
    pub fn finish(mut self) -> std::io::Result<Written> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl Drop for DataWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn write_spans(rx: Receiver<Vec<u8>>, out: File, compression: DataCompression) -> std::io::Result<Written> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut compressor = match compression {
        DataCompression::None => None,
        DataCompression::Zstd { level } => Some(zstd::bulk::Compressor::new(level)?),
    };
    let mut whole = Sha256::new();
    let (mut spans, mut out_offset, mut stored) = (Vec::new(), 0u64, 0u64);
    for span in rx {
        let digest: [u8; 32] = Sha256::digest(&span).into();
        let frame;
        let bytes: &[u8] = match compressor.as_mut() {
            Some(c) => {
                frame = c.compress(&span)?;
                &frame
            }
            None => &span,
        };
        out.write_all(bytes)?;
        whole.update(bytes);
        spans.push(SpanSpec { out_offset, in_offset: stored, bits: 0, digest, window: WindowRef::default() });
        out_offset += span.len() as u64;
        stored += bytes.len() as u64;
    }
    out.flush()?;
    Ok(Written { spans, stored, digest: whole.finalize().into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn run(compression: DataCompression, chunks: &[&[u8]], span: u64) -> (Written, Vec<u8>) {
        let mut file = tempfile::tempfile().unwrap();
        let mut w = DataWriter::new(file.try_clone().unwrap(), span, compression);
        for c in chunks {
            w.write(c).unwrap();
        }
        let written = w.finish().unwrap();
        let mut stored = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut stored).unwrap();
        (written, stored)
    }

    #[test]
    fn raw_spans_tile_the_stream_with_digests() {
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let (w, stored) = run(DataCompression::None, &[&data[..3], &data[3..17], &data[17..]], 10);
        assert_eq!(stored, data);
        assert_eq!(w.stored, 25);
        let starts: Vec<_> = w.spans.iter().map(|s| (s.out_offset, s.in_offset)).collect();
        assert_eq!(starts, [(0, 0), (10, 10), (20, 20)]);
        assert_eq!(w.spans[2].digest, <[u8; 32]>::from(Sha256::digest(&data[20..])));
        assert_eq!(w.digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn zstd_spans_are_independent_frames() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (w, stored) = run(DataCompression::Zstd { level: 3 }, &[&data], 32 << 10);
        assert_eq!(w.spans.len(), 4);
        for (i, s) in w.spans.iter().enumerate() {
            let end = w.spans.get(i + 1).map_or(stored.len() as u64, |n| n.in_offset);
            let frame = &stored[s.in_offset as usize..end as usize];
            let out = zstd::bulk::decompress(frame, 32 << 10).unwrap();
            let want = &data[s.out_offset as usize..(s.out_offset as usize + out.len())];
            assert_eq!(out, want, "span {i}");
            assert_eq!(s.digest, <[u8; 32]>::from(Sha256::digest(want)));
        }
        assert!(w.stored < 20_000, "{} bytes: not compressed", w.stored);
    }

    #[test]
    fn empty_stream_has_no_spans() {
        let (w, stored) = run(DataCompression::None, &[], 10);
        assert!(w.spans.is_empty() && stored.is_empty() && w.stored == 0);
    }
}
