//! The [`BlobSource`] trait every image source implements, and the byte accounting shared by
//! all of them.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};

use crate::digest::Descriptor;
use crate::error::SourceError;

/// A blob's bytes as a stream of chunks, in order. The stream owns everything it needs
/// (`'static`), so it can be moved into a spawned task. It ends with an error if the source
/// delivers more or fewer bytes than the descriptor's size.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send + 'static>>;

/// Counters of blob traffic, for logs and for tests that prove reads are lazy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Blob reads started: one per `open_blob` and per non-empty `read_range` (for a registry,
    /// one HTTP request each; manifests and token requests are not counted).
    pub requests: u64,
    /// Blob bytes received, counted as they arrive (including bytes a registry sent that we had
    /// to skip because it ignored a Range header).
    pub bytes: u64,
}

/// Where blobs come from: a registry, an OCI layout, or memory.
///
/// Object safe: used as `Arc<dyn BlobSource>` by the indexer and the content store. Methods
/// return boxed futures that are `Send`, so they can be awaited inside spawned tokio tasks. None
/// of them verifies digests; callers that need integrity (the indexer, the content store) hash
/// what they read.
pub trait BlobSource: Send + Sync {
    /// The whole blob as a stream of chunks.
    fn open_blob<'a>(&'a self, desc: &'a Descriptor) -> BoxFuture<'a, Result<BlobStream, SourceError>>;

    /// Bytes `[range.start, range.end)` of a blob. The range must lie within `desc.size`; an
    /// empty range returns no bytes without touching the source. The answer has exactly
    /// `range.end - range.start` bytes or is an error.
    fn read_range<'a>(&'a self, desc: &'a Descriptor, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        if let Err(e) = check_range(desc, &range) {
            return futures::future::ready(Err(e)).boxed();
        }
        if range.is_empty() {
            return futures::future::ready(Ok(Bytes::new())).boxed();
        }
        self.read_checked_range(desc, range)
    }

    /// [`BlobSource::read_range`] of a non-empty range already checked to lie within `desc.size`: what each
    /// source implements.
    fn read_checked_range<'a>(
        &'a self,
        desc: &'a Descriptor,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>>;

    /// A human-readable name of the source for logs and errors, e.g. `registry 127.0.0.1:5000
    /// repository app` or `OCI layout /tmp/img`. Never contains credentials.
    fn describe(&self) -> String;

    /// Traffic so far.
    fn stats(&self) -> SourceStats;
}

impl fmt::Debug for dyn BlobSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Shared request and byte counters of one source.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counter {
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Counter {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> SourceStats {
        SourceStats { requests: self.requests.load(Ordering::Relaxed), bytes: self.bytes.load(Ordering::Relaxed) }
    }
}

/// Wraps a raw chunk stream: counts bytes as they arrive and turns a length that differs from the
/// descriptor's size into an error (a registry cannot make us read forever).
pub(crate) struct CheckedStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>>,
    counter: Counter,
    digest: String,
    location: String,
    expected: u64,
    seen: u64,
    done: bool,
}

impl CheckedStream {
    pub(crate) fn new(
        inner: Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>>,
        counter: Counter,
        desc: &Descriptor,
        location: String,
    ) -> CheckedStream {
        CheckedStream {
            inner,
            counter,
            digest: desc.digest.to_string(),
            location,
            expected: desc.size,
            seen: 0,
            done: false,
        }
    }

    fn fail(&mut self, detail: String) -> Poll<Option<Result<Bytes, SourceError>>> {
        self.done = true;
        Poll::Ready(Some(Err(SourceError::Transfer {
            digest: self.digest.clone(),
            location: self.location.clone(),
            detail,
        })))
    }
}

impl Stream for CheckedStream {
    type Item = Result<Bytes, SourceError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.counter.add_bytes(chunk.len());
                this.seen += chunk.len() as u64;
                if this.seen > this.expected {
                    let detail = format!("received more than the {} bytes the manifest declares", this.expected);
                    return this.fail(detail);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) if this.seen < this.expected => {
                let detail = format!("ended after {} of the {} bytes the manifest declares", this.seen, this.expected);
                this.fail(detail)
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

/// Rejects ranges outside the blob.
pub(crate) fn check_range(desc: &Descriptor, range: &Range<u64>) -> Result<(), SourceError> {
    if range.start > range.end || range.end > desc.size {
        return Err(SourceError::InvalidRange {
            digest: desc.digest.to_string(),
            start: range.start,
            end: range.end,
            size: desc.size,
        });
    }
    Ok(())
}

/// Reads a whole (small) blob into memory, refusing blobs larger than `limit`.
pub(crate) async fn read_to_vec(
    source: &dyn BlobSource,
    desc: &Descriptor,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, SourceError> {
    if desc.size > limit {
        return Err(SourceError::TooLarge { what, digest: desc.digest.to_string(), size: desc.size, limit });
    }
    let mut stream = source.open_blob(desc).await?;
    let mut out = BytesMut::with_capacity(desc.size as usize);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.to_vec())
}

/// Downloads the blob `desc` into the file `dest` (created or truncated), streaming (memory stays
/// flat whatever its size), and checks the bytes against its digest: a mismatch is
/// [`SourceError::DigestMismatch`] (the file then holds unverified bytes: callers write into a temporary
/// file and rename it once this succeeds). Returns its size.
pub async fn download_verified(
    source: &dyn BlobSource,
    desc: &Descriptor,
    dest: &std::path::Path,
) -> Result<u64, SourceError> {
    use sha2::Digest as _;
    use tokio::io::AsyncWriteExt;

    let io = |e| SourceError::io(dest, e);
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let mut stream = source.open_blob(desc).await?;
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hash.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    let actual = crate::digest::Digest::from_sha256(hash.finalize().into());
    if actual != desc.digest {
        return Err(SourceError::DigestMismatch {
            what: "blob",
            location: source.describe(),
            expected: desc.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn chunks(parts: &[&'static [u8]]) -> Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>> {
        let items: Vec<Result<Bytes, SourceError>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn drain(mut s: CheckedStream) -> (Vec<u8>, Option<SourceError>) {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn checked_stream_counts_and_checks_length() {
        let desc = Descriptor::new("x", Digest::of(b"abcdef"), 6);
        let counter = Counter::default();
        let (data, err) =
            drain(CheckedStream::new(chunks(&[b"abc", b"def"]), counter.clone(), &desc, "t".into())).await;
        assert_eq!(data, b"abcdef");
        assert!(err.is_none());
        assert_eq!(counter.stats().bytes, 6);

        let (_, err) = drain(CheckedStream::new(chunks(&[b"abc"]), counter.clone(), &desc, "t".into())).await;
        assert!(err.unwrap().to_string().contains("ended after 3 of the 6 bytes"));

        let (_, err) = drain(CheckedStream::new(chunks(&[b"abcd", b"efgh"]), counter.clone(), &desc, "t".into())).await;
        assert!(err.unwrap().to_string().contains("more than the 6 bytes"));
        assert_eq!(counter.stats().bytes, 6 + 3 + 8);
    }

    #[test]
    fn ranges_must_fit() {
        let desc = Descriptor::new("x", Digest::of(b"abc"), 3);
        assert!(check_range(&desc, &(0..3)).is_ok());
        assert!(check_range(&desc, &(3..3)).is_ok());
        assert!(check_range(&desc, &(2..4)).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 2..1;
        assert!(check_range(&desc, &reversed).is_err());
    }
}
