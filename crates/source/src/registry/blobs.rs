//! Blob reads of a [`super::RegistrySource`]: GETs and Range GETs. On top of them sits the retry policy
//! ([`crate::RetryPolicy`]): transient failures are retried with backoff (honouring `Retry-After`), a
//! Range read cut short resumes where it stopped, a 401 re-authenticates once (an expired token) and
//! retries, a body slower than the rate floor fails like a broken connection. A whole-blob stream that
//! breaks off resumes with a Range request from where it stopped (the budget of attempts starts afresh
//! whenever bytes arrived since the last failure, up to the policy's total).
//! Redirects are followed by reqwest, which drops the `Authorization` header when a redirect leaves
//! the registry's host. A registry that ignores `Range` and answers 200 with the whole blob is skipped
//! through while streaming, never buffered.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Response, StatusCode};
use tracing::{debug, warn};

use super::auth::RequestAuth;
use super::request::{error_chain, Target};
use super::Registry;
use crate::digest::Descriptor;
use crate::error::SourceError;
use crate::retry::{Failed, Pace, Tries};

impl Registry {
    fn blob_url(&self, desc: &Descriptor) -> String {
        self.url(&format!("blobs/{}", desc.digest))
    }

    /// Sends one GET of the blob (of `range`, if given); returns the response when it is 200 or 206.
    async fn send_get(
        &self,
        desc: &Descriptor,
        range: Option<&Range<u64>>,
        auth: &RequestAuth,
    ) -> Result<Response, Failed> {
        let mut request = self.http.get(self.blob_url(desc));
        if let Some(r) = range {
            request = request.header(RANGE, format!("bytes={}-{}", r.start, r.end - 1));
        }
        let target = Target::Blob(&desc.digest);
        let response = auth.apply(request).send().await.map_err(|e| self.send_failed(e, &target))?;
        let status = response.status();
        if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
            self.answered();
            return Ok(response);
        }
        Err(self.status_failed(response, &target).await)
    }

    /// Bytes `range` of a blob, retried and resumed as the module docs say.
    pub(super) async fn get_range(&self, desc: &Descriptor, range: Range<u64>) -> Result<Bytes, SourceError> {
        let len = range.end - range.start;
        let mut out = BytesMut::with_capacity(len.min(16 << 20) as usize);
        let mut tries = Tries::default();
        loop {
            let (generation, auth) = self.authenticated().await?;
            // Resume after the bytes earlier attempts delivered.
            let rest = range.start + out.len() as u64..range.end;
            match self.range_attempt(desc, rest, &auth, &mut out).await {
                Ok(()) => return Ok(out.freeze()),
                Err(f) => self.before_retry(&Target::Blob(&desc.digest), f, &mut tries, Some(generation)).await?,
            }
        }
    }

    /// Whether the registry answers a Range GET of this blob with `206 Partial Content`: one request for its
    /// first byte (retried like any blob read). A `200` means it sends whole blobs whatever the `Range`;
    /// its body is not read (the connection is dropped).
    pub(super) async fn probe_range(&self, desc: &Descriptor) -> Result<bool, SourceError> {
        if desc.size == 0 {
            return Ok(true);
        }
        let mut tries = Tries::default();
        loop {
            let (generation, auth) = self.authenticated().await?;
            self.counter.request();
            match self.send_get(desc, Some(&(0..1)), &auth).await {
                Ok(response) => {
                    let partial = response.status() == StatusCode::PARTIAL_CONTENT;
                    debug!(digest = %desc.digest, status = %response.status(), "range probe");
                    return Ok(partial);
                }
                Err(f) => self.before_retry(&Target::Blob(&desc.digest), f, &mut tries, Some(generation)).await?,
            }
        }
    }

    /// One Range GET of `range`, appending what arrives to `out`.
    async fn range_attempt(
        &self,
        desc: &Descriptor,
        range: Range<u64>,
        auth: &RequestAuth,
        out: &mut BytesMut,
    ) -> Result<(), Failed> {
        self.counter.request();
        let len = range.end - range.start;
        debug!(digest = %desc.digest, offset = range.start, len, "GET blob range");
        let response = self.send_get(desc, Some(&range), auth).await?;
        let skip = if response.status() == StatusCode::PARTIAL_CONTENT {
            if let Some(first) = content_range_start(&response) {
                if first != range.start {
                    let detail = format!("asked for bytes from {} and got a range from {first}", range.start);
                    return Err(Failed::retry(self.transfer_error(desc, detail)));
                }
            }
            0
        } else {
            // The registry ignored the Range header: skip to the offset while streaming and hang up once
            // we have the bytes, never holding the whole blob.
            if !self.range_ignored.swap(true, Ordering::Relaxed) {
                warn!(
                    registry = %self.registry,
                    digest = %desc.digest,
                    offset = range.start,
                    "registry ignores Range requests and sends whole blobs; skipping to offsets while streaming"
                );
            }
            range.start
        };
        self.collect(desc, response, skip, len, out).await
    }

    /// Appends `len` bytes of `response`'s body after skipping `skip`, counting everything received.
    async fn collect(
        &self,
        desc: &Descriptor,
        response: Response,
        mut skip: u64,
        len: u64,
        out: &mut BytesMut,
    ) -> Result<(), Failed> {
        let goal = out.len() as u64 + len;
        let mut body = response.bytes_stream();
        let mut pace = Pace::new(&self.retry);
        while (out.len() as u64) < goal {
            let next = pace.next(&mut body).await.map_err(|detail| Failed::retry(self.transfer_error(desc, detail)))?;
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(Failed::retry(self.transfer_error(desc, error_chain(&e.without_url())))),
                None => {
                    let detail =
                        format!("response ended {} bytes short of the range asked for", goal - out.len() as u64);
                    return Err(Failed::retry(self.transfer_error(desc, detail)));
                }
            };
            self.counter.add_bytes(chunk.len());
            pace.add(chunk.len()).map_err(|detail| Failed::retry(self.transfer_error(desc, detail)))?;
            let mut chunk = &chunk[..];
            if skip > 0 {
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                chunk = &chunk[dropped as usize..];
            }
            let want = (goal - out.len() as u64).min(chunk.len() as u64) as usize;
            out.extend_from_slice(&chunk[..want]);
        }
        Ok(())
    }

    /// The whole blob as a stream that resumes with a Range request when the connection breaks.
    pub(super) async fn get_whole(
        self: Arc<Self>,
        desc: &Descriptor,
    ) -> Result<BoxStream<'static, Result<Bytes, SourceError>>, SourceError> {
        let mut tries = Tries::default();
        debug!(digest = %desc.digest, size = desc.size, "GET blob");
        let body = self.open_at(desc, 0, &mut tries).await?;
        let state = Resume { registry: self, desc: desc.clone(), body: Some(body), seen: 0, tries, progress: false };
        Ok(futures::stream::unfold(state, Resume::next).boxed())
    }

    /// GETs the blob from byte `offset` on (a Range request unless 0), retrying under the policy until an
    /// answer comes; the body it returns skips to `offset` if the registry sent the whole blob.
    async fn open_at(&self, desc: &Descriptor, offset: u64, tries: &mut Tries) -> Result<Body, SourceError> {
        loop {
            let (generation, auth) = self.authenticated().await?;
            self.counter.request();
            let range = (offset > 0).then_some(offset..desc.size);
            let failed = match self.send_get(desc, range.as_ref(), &auth).await {
                Ok(response) if response.status() == StatusCode::PARTIAL_CONTENT => {
                    match content_range_start(&response) {
                        Some(first) if first != offset => {
                            let detail = format!("asked for bytes from {offset} and got a range from {first}");
                            Failed::retry(self.transfer_error(desc, detail))
                        }
                        _ => return Ok(Body::new(response, 0, &self.retry)),
                    }
                }
                Ok(response) => return Ok(Body::new(response, offset, &self.retry)),
                Err(f) => f,
            };
            self.before_retry(&Target::Blob(&desc.digest), failed, tries, Some(generation)).await?;
        }
    }
}

/// A response body being streamed, how many of its first bytes to drop, and its rate floor.
struct Body {
    stream: BoxStream<'static, reqwest::Result<Bytes>>,
    skip: u64,
    pace: Pace,
}

impl Body {
    fn new(response: Response, skip: u64, policy: &crate::RetryPolicy) -> Body {
        Body { stream: response.bytes_stream().boxed(), skip, pace: Pace::new(policy) }
    }
}

/// The state of a resumable whole-blob stream.
struct Resume {
    registry: Arc<Registry>,
    desc: Descriptor,
    /// `None` once the stream has ended (or failed for good).
    body: Option<Body>,
    /// Blob bytes passed on so far.
    seen: u64,
    tries: Tries,
    /// Whether bytes arrived since the last failure.
    progress: bool,
}

impl Resume {
    async fn next(mut self) -> Option<(Result<Bytes, SourceError>, Resume)> {
        loop {
            let body = self.body.as_mut()?;
            let next = match body.pace.next(&mut body.stream).await {
                Ok(next) => next.map(|item| item.map_err(|e| error_chain(&e.without_url()))),
                Err(detail) => Some(Err(detail)),
            };
            let detail = match next {
                Some(Ok(mut chunk)) => {
                    if let Err(detail) = body.pace.add(chunk.len()) {
                        detail
                    } else {
                        if body.skip > 0 {
                            let dropped = body.skip.min(chunk.len() as u64);
                            self.registry.counter.add_bytes(dropped as usize);
                            body.skip -= dropped;
                            chunk = chunk.slice(dropped as usize..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        self.seen += chunk.len() as u64;
                        self.progress = true;
                        return Some((Ok(chunk), self));
                    }
                }
                Some(Err(detail)) => detail,
                None if self.seen < self.desc.size => {
                    format!("the response ended after {} of {} bytes", self.seen, self.desc.size)
                }
                None => {
                    self.body = None;
                    return None;
                }
            };
            // Broken off: resume from where it stopped. Progress since the last failure earns a fresh
            // budget of attempts, up to the policy's total (a trickle cannot refill it forever).
            if std::mem::take(&mut self.progress) {
                self.tries.progressed();
            }
            let registry = Arc::clone(&self.registry);
            let failed = Failed::retry(registry.transfer_error(&self.desc, detail));
            let generation = registry.auth_state.generation();
            let target = Target::Blob(&self.desc.digest);
            let resumed = match registry.before_retry(&target, failed, &mut self.tries, Some(generation)).await {
                Ok(()) => registry.open_at(&self.desc, self.seen, &mut self.tries).await,
                Err(e) => Err(e),
            };
            match resumed {
                Ok(body) => {
                    debug!(digest = %self.desc.digest, offset = self.seen, "blob stream resumed");
                    self.body = Some(body);
                }
                Err(e) => {
                    self.body = None;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL` header.
fn content_range_start(response: &Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}
