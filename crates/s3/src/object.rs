//! [`S3Object`]: one object's size, ranged GETs, and upload from a local file, built on `object_store`.
//! Server errors and dropped connections are retried a few times with backoff; what still fails becomes a
//! [`S3Error`] naming the object and, where the user can act, what to check (credentials, key).

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;
use tracing::debug;

use crate::config::{virtual_hosted_endpoint, S3Config, S3Options, S3Url};
use crate::S3Error;

/// Smallest multipart part (S3 needs ≥ 5 MiB for all but the last).
const MIN_PART: u64 = 8 << 20;
/// Largest part we choose unless the object needs bigger ones to stay within 10 000 parts.
const MAX_PART: u64 = 64 << 20;
/// S3's limit on the number of parts.
const MAX_PARTS: u64 = 10_000;
/// Parts uploaded at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Requests made and bytes received by one [`S3Object`] (and its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3Stats {
    pub requests: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Counter {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Counter {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An object in S3 and a client for its endpoint. Cheap to clone (`Arc` inside; clones share counters).
#[derive(Debug, Clone)]
pub struct S3Object {
    store: Arc<AmazonS3>,
    url: S3Url,
    path: ObjectPath,
    config: Arc<S3Config>,
    counter: Arc<Counter>,
}

impl S3Object {
    /// A client for `url`, configured from the environment and `~/.aws` (see [`S3Config::from_env`]).
    pub fn open(url: &S3Url, opts: &S3Options) -> Result<S3Object, S3Error> {
        Self::with_config(url, S3Config::from_env(opts)?)
    }

    /// A client for `url` with an explicit configuration.
    pub fn with_config(url: &S3Url, config: S3Config) -> Result<S3Object, S3Error> {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        };
        let client = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&url.bucket)
            .with_region(&config.region)
            .with_retry(retry)
            .with_client_options(client);
        builder = match (&config.endpoint, config.path_style) {
            (Some(endpoint), true) => builder.with_endpoint(endpoint),
            (Some(endpoint), false) => builder
                .with_endpoint(virtual_hosted_endpoint(endpoint, &url.bucket))
                .with_virtual_hosted_style_request(true),
            (None, path_style) => builder.with_virtual_hosted_style_request(!path_style),
        };
        builder = match &config.credentials {
            Some(c) => {
                let b = builder.with_access_key_id(&c.access_key_id).with_secret_access_key(&c.secret_access_key);
                match &c.session_token {
                    Some(t) => b.with_token(t),
                    None => b,
                }
            }
            // Without credentials, object_store would ask the EC2 metadata service; clip sends anonymous
            // requests instead (public buckets), and says so when they are refused.
            None => builder.with_skip_signature(true),
        };
        let store = builder.build().map_err(|e| S3Error::Config { reason: detail(&e) })?;
        let path = ObjectPath::parse(&url.key)
            .map_err(|e| S3Error::InvalidUrl { input: url.to_string(), reason: e.to_string() })?;
        debug!(url = %url, endpoint = %config.endpoint_display(), path_style = config.path_style,
            credentials = %config.credentials_origin(), "S3 client");
        Ok(S3Object {
            store: Arc::new(store),
            url: url.clone(),
            path,
            config: Arc::new(config),
            counter: Arc::default(),
        })
    }

    /// The object's location.
    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// The object `key` in the same bucket, sharing this client (its connections and counters).
    pub fn in_bucket(&self, key: &str) -> Result<S3Object, S3Error> {
        let url = S3Url { bucket: self.url.bucket.clone(), key: key.to_owned() };
        let path = ObjectPath::parse(key)
            .map_err(|e| S3Error::InvalidUrl { input: url.to_string(), reason: e.to_string() })?;
        Ok(S3Object { path, url, ..self.clone() })
    }

    /// The whole object, or `None` when it does not exist (one GET); an object larger than `max` bytes
    /// is an error (by its declared size before reading, and while reading: never more than `max` bytes
    /// in memory).
    pub async fn get(&self, max: u64) -> Result<Option<Bytes>, S3Error> {
        use futures::StreamExt;
        self.counter.request();
        let result = match self.store.get(&self.path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("GET", e)),
        };
        let too_large = || S3Error::Transfer {
            url: self.url.to_string(),
            op: "GET",
            detail: format!("the object is larger than the {max} bytes clip reads into memory"),
        };
        if result.meta.size > max {
            return Err(too_large());
        }
        let mut out = bytes::BytesMut::with_capacity(result.meta.size as usize);
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error("GET", e))?;
            self.counter.add_bytes(chunk.len());
            if out.len() as u64 + chunk.len() as u64 > max {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out.freeze()))
    }

    /// Writes `bytes` as the whole object (one PUT).
    pub async fn put(&self, bytes: Bytes) -> Result<(), S3Error> {
        self.counter.request();
        self.store.put(&self.path, bytes.into()).await.map_err(|e| self.error("PUT", e))?;
        Ok(())
    }

    /// Size in bytes (a HEAD request).
    pub async fn size(&self) -> Result<u64, S3Error> {
        self.counter.request();
        let meta = self.store.head(&self.path).await.map_err(|e| self.error("HEAD", e))?;
        Ok(meta.size)
    }

    /// Bytes `[range.start, range.end)` (a ranged GET); exactly that many or an error. An empty range
    /// returns nothing without a request.
    pub async fn read_range(&self, range: Range<u64>) -> Result<Bytes, S3Error> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        self.counter.request();
        let want = range.end - range.start;
        let bytes = self.store.get_range(&self.path, range.clone()).await.map_err(|e| self.error("GET", e))?;
        self.counter.add_bytes(bytes.len());
        if bytes.len() as u64 != want {
            return Err(S3Error::Transfer {
                url: self.url.to_string(),
                op: "GET",
                detail: format!(
                    "range {}..{}: received {} of {want} bytes (is the object shorter than expected?)",
                    range.start,
                    range.end,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Up to `len` bytes from the start of the object (fewer if it is shorter) and the object's size, in one
    /// GET.
    pub async fn read_prefix(&self, len: u64) -> Result<(Bytes, u64), S3Error> {
        self.counter.request();
        let opts = GetOptions { range: Some(GetRange::Bounded(0..len.max(1))), ..GetOptions::default() };
        let result = self.store.get_opts(&self.path, opts).await.map_err(|e| self.error("GET", e))?;
        let size = result.meta.size;
        let bytes = result.bytes().await.map_err(|e| self.error("GET", e))?;
        self.counter.add_bytes(bytes.len());
        Ok((bytes, size))
    }

    /// Uploads the local file `file` as this object: one PUT when it fits in one part, else a multipart
    /// upload of 8–64 MiB parts, a few at once (aborted if anything fails). `progress` gets the bytes
    /// read so far. Returns the object's size.
    pub async fn upload_file(
        &self,
        file: &Path,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64, S3Error> {
        let io = |e| S3Error::io(file)(e);
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        let size = f.metadata().await.map_err(io)?.len();
        let part = part_size(size);
        debug!(url = %self.url, size, part, "upload");
        if size <= part {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).await.map_err(io)?;
            self.counter.request();
            self.store.put(&self.path, Bytes::from(buf).into()).await.map_err(|e| self.error("PUT", e))?;
            if let Some(p) = progress {
                p(size);
            }
            return Ok(size);
        }
        self.counter.request();
        let upload = self.store.put_multipart(&self.path).await.map_err(|e| self.error("multipart upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part as usize);
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        let result: Result<(), S3Error> = async {
            loop {
                let n = f.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(UPLOAD_CONCURRENCY).await.map_err(|e| self.error("upload part", e))?;
                writer.write(&buf[..n]);
                sent += n as u64;
                if let Some(p) = progress {
                    p(sent);
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if let Err(abort) = writer.abort().await {
                debug!(url = %self.url, error = %detail(&abort), "aborting the multipart upload failed");
            }
            return Err(e);
        }
        writer.finish().await.map_err(|e| self.error("complete multipart upload", e))?;
        if sent != size {
            return Err(S3Error::Transfer {
                url: self.url.to_string(),
                op: "upload",
                detail: format!("{} changed while uploading ({sent} bytes read, {size} expected)", file.display()),
            });
        }
        Ok(size)
    }

    /// `s3://BUCKET/KEY at ENDPOINT`, for logs and errors (never credentials).
    pub fn describe(&self) -> String {
        format!("{} at {}", self.url, self.config.endpoint_display())
    }

    /// Requests and bytes received so far.
    pub fn stats(&self) -> S3Stats {
        S3Stats {
            requests: self.counter.requests.load(Ordering::Relaxed),
            bytes: self.counter.bytes.load(Ordering::Relaxed),
        }
    }

    fn error(&self, op: &'static str, e: object_store::Error) -> S3Error {
        let url = self.url.to_string();
        match e {
            object_store::Error::NotFound { .. } => S3Error::NotFound { url },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                S3Error::Auth { url, op, detail: detail(&e), credentials: self.config.credentials_origin() }
            }
            other => S3Error::Request { url, op, endpoint: self.config.endpoint_display(), detail: detail(&other) },
        }
    }
}

/// Part size for an object of `size` bytes: 8 MiB, more for huge objects, whole MiB.
fn part_size(size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    needed.clamp(MIN_PART, MAX_PART.max(needed))
}

/// An error and its causes, deduplicated, on one line.
fn detail(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_8_to_64_mib_and_fit_10000() {
        assert_eq!(part_size(0), MIN_PART);
        assert_eq!(part_size(100 << 30), 11 << 20);
        assert_eq!(part_size(MIN_PART * MAX_PARTS), MIN_PART);
        let huge = 1u64 << 40;
        assert!(part_size(huge) * MAX_PARTS >= huge);
        assert_eq!(part_size(huge) % (1 << 20), 0);
    }
}
