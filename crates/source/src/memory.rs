//! [`MemorySource`]: blobs held in memory, for unit tests of the layers above (the indexer, the
//! content store) that need a [`BlobSource`] without a registry.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::digest::{Descriptor, Digest};
use crate::error::SourceError;
use crate::source::{check_range, BlobSource, BlobStream, CheckedStream, Counter, SourceStats};

/// A [`BlobSource`] over blobs in memory, keyed by digest. Streams are cut into `chunk_size`
/// pieces so consumers see more than one chunk. Counts requests and bytes like the real sources.
#[derive(Debug)]
pub struct MemorySource {
    blobs: HashMap<Digest, Bytes>,
    chunk_size: usize,
    counter: Counter,
}

impl MemorySource {
    /// An empty source delivering streams in 64 KiB chunks.
    pub fn new() -> MemorySource {
        MemorySource { blobs: HashMap::new(), chunk_size: 64 * 1024, counter: Counter::default() }
    }

    /// Sets the chunk size of streams (at least 1).
    pub fn with_chunk_size(mut self, chunk_size: usize) -> MemorySource {
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// Adds a blob and returns its descriptor.
    pub fn insert(&mut self, media_type: &str, data: impl Into<Bytes>) -> Descriptor {
        let data = data.into();
        let desc = Descriptor::new(media_type, Digest::of(&data), data.len() as u64);
        self.blobs.insert(desc.digest.clone(), data);
        desc
    }

    fn get(&self, desc: &Descriptor) -> Result<Bytes, SourceError> {
        self.blobs
            .get(&desc.digest)
            .cloned()
            .ok_or_else(|| SourceError::BlobNotFound { digest: desc.digest.to_string(), location: self.describe() })
    }
}

impl Default for MemorySource {
    fn default() -> Self {
        MemorySource::new()
    }
}

impl BlobSource for MemorySource {
    fn open_blob<'a>(&'a self, desc: &'a Descriptor) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        async move {
            let data = self.get(desc)?;
            self.counter.request();
            let chunks: Vec<Result<Bytes, SourceError>> = (0..data.len())
                .step_by(self.chunk_size)
                .map(|start| Ok(data.slice(start..(start + self.chunk_size).min(data.len()))))
                .collect();
            let stream = Box::pin(futures::stream::iter(chunks));
            let checked = CheckedStream::new(stream, self.counter.clone(), desc, self.describe());
            Ok(Box::pin(checked) as BlobStream)
        }
        .boxed()
    }

    fn read_range<'a>(&'a self, desc: &'a Descriptor, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move {
            check_range(desc, &range)?;
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            let data = self.get(desc)?;
            self.counter.request();
            if (data.len() as u64) < range.end {
                return Err(SourceError::Transfer {
                    digest: desc.digest.to_string(),
                    location: self.describe(),
                    detail: format!("blob has {} bytes, range ends at {}", data.len(), range.end),
                });
            }
            let out = data.slice(range.start as usize..range.end as usize);
            self.counter.add_bytes(out.len());
            Ok(out)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn stats(&self) -> SourceStats {
        self.counter.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn streams_in_chunks_and_reads_ranges() {
        let mut source = MemorySource::new().with_chunk_size(3);
        let desc = source.insert("application/octet-stream", &b"0123456789"[..]);
        let mut stream = source.open_blob(&desc).await.unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk.unwrap());
        }
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), b"0123456789");
        assert_eq!(&source.read_range(&desc, 2..5).await.unwrap()[..], b"234");
        assert_eq!(source.stats(), SourceStats { requests: 2, bytes: 13 });
        let missing = Descriptor::new("x", Digest::of(b"nope"), 4);
        assert!(matches!(source.read_range(&missing, 0..1).await, Err(SourceError::BlobNotFound { .. })));
    }
}
