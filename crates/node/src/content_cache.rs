//! [`S3SpanCache`]: the shared content cache tier in an S3-compatible bucket. Each decoded span is one
//! object, `s3://BUCKET/PREFIX/spans/<sha256 hex of the decoded bytes>`, stored zstd-compressed (level 3)
//! so a fleet's bucket holds about what the registry does. Objects are named by content: nodes never
//! coordinate, a put of an existing span rewrites the same bytes, and the store verifies every get.

use bytes::Bytes;
use clip_format::Digest;
use clip_s3::{S3Error, S3Object, S3Options, S3Url};
use clip_store::{RemoteSpanCache, StoreError};
use futures::future::BoxFuture;

/// zstd level of stored spans: fast to write from the read path's background task.
const ZSTD_LEVEL: i32 = 3;

/// A [`RemoteSpanCache`] in S3 (see the module docs for the layout).
pub struct S3SpanCache {
    /// The `PREFIX/spans` "directory"; objects are made from it with [`S3Object::in_bucket`].
    base: S3Object,
    prefix: String,
}

impl S3SpanCache {
    /// A tier at `url` (`s3://BUCKET/PREFIX`), configured from the environment and `opts` like every S3
    /// location of clip.
    pub fn open(url: &S3Url, opts: &S3Options) -> Result<S3SpanCache, S3Error> {
        let prefix = spans_prefix(&url.key);
        let base = S3Object::open(&S3Url { bucket: url.bucket.clone(), key: prefix.clone() }, opts)?;
        Ok(S3SpanCache { base, prefix })
    }

    /// The object key of the span with sha256 `digest`.
    pub fn key(&self, digest: &Digest) -> String {
        format!("{}/{}", self.prefix, digest.hex())
    }

    fn object(&self, digest: &Digest) -> Result<S3Object, StoreError> {
        self.base.in_bucket(&self.key(digest)).map_err(|e| tier_error(digest, e))
    }
}

/// `PREFIX/spans` for the tier's key `PREFIX` (slashes around it ignored).
fn spans_prefix(key: &str) -> String {
    let prefix = key.trim_matches('/');
    if prefix.is_empty() {
        "spans".to_owned()
    } else {
        format!("{prefix}/spans")
    }
}

fn tier_error(digest: &Digest, e: impl std::fmt::Display) -> StoreError {
    StoreError::Tier { digest: *digest, reason: e.to_string() }
}

impl RemoteSpanCache for S3SpanCache {
    fn get(&self, digest: &Digest, len: u64) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let digest = *digest;
        Box::pin(async move {
            // A stored span is zstd of at most `len` bytes: never larger than `len` plus zstd's worst case.
            let max = len.saturating_add(len / 64).saturating_add(64 << 10);
            let Some(stored) = self.object(&digest)?.get(max).await.map_err(|e| tier_error(&digest, e))? else {
                return Ok(None);
            };
            // A hostile object cannot make us allocate more than the span: decode at most `len` + 1 bytes.
            let limit = usize::try_from(len.saturating_add(1)).unwrap_or(usize::MAX);
            let decoded = tokio::task::spawn_blocking(move || zstd::bulk::decompress(&stored, limit))
                .await
                .map_err(|e| tier_error(&digest, e))?;
            // Undecodable bytes are the same as wrong bytes: hand back nothing the store would accept.
            Ok(Some(decoded.map(Bytes::from).unwrap_or_default()))
        })
    }

    fn put(&self, digest: &Digest, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let digest = *digest;
        Box::pin(async move {
            let object = self.object(&digest)?;
            let stored = tokio::task::spawn_blocking(move || zstd::bulk::compress(&bytes, ZSTD_LEVEL))
                .await
                .map_err(|e| tier_error(&digest, e))?
                .map_err(|e| tier_error(&digest, e))?;
            object.put(Bytes::from(stored)).await.map_err(|e| tier_error(&digest, e))
        })
    }

    fn describe(&self) -> String {
        self.base.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_prefix_spans() {
        assert_eq!(spans_prefix("fleet/cache/"), "fleet/cache/spans");
        assert_eq!(spans_prefix("/"), "spans");
    }
}
