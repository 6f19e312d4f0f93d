//! Blob reads of a [`super::RegistrySource`]: GETs and Range GETs made with `reqwest` directly rather than
//! through `oci-client`, so that every answer's status and headers are seen. On top of them sits the
//! retry policy ([`crate::RetryPolicy`]): transient failures are retried with backoff (honouring
//! `Retry-After`), a Range read cut short resumes where it stopped, a 401 re-authenticates once (an
//! expired token) and retries. A whole-blob stream that breaks off resumes with a Range request from
//! where it stopped (the retry budget starts afresh whenever bytes arrived since the last failure).
//! Redirects are followed by reqwest, which drops the `Authorization` header when a redirect leaves
//! the registry's host. A registry that ignores `Range` and answers 200 with the whole blob is skipped
//! through while streaming, never buffered.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use reqwest::header::{CONTENT_RANGE, RANGE, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use tracing::{debug, warn};

use super::errors::{error_chain, Target};
use super::Registry;
use crate::digest::Descriptor;
use crate::error::SourceError;
use crate::retry::{parse_retry_after, verdict_for_status, Failed, Verdict};

/// The credentials blob requests carry. `Debug` never shows a secret.
#[derive(Clone, Default)]
pub(super) enum BlobAuth {
    #[default]
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl fmt::Debug for BlobAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobAuth::Anonymous => "anonymous",
            BlobAuth::Basic { .. } => "basic (redacted)",
            BlobAuth::Bearer(_) => "bearer token (redacted)",
        })
    }
}

impl BlobAuth {
    /// Adds the `Authorization` header (marked sensitive: kept out of reqwest's debug output and
    /// dropped on redirects to other hosts).
    fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        match self {
            BlobAuth::Anonymous => request,
            BlobAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
            BlobAuth::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// The current blob credentials and their generation, bumped by every refresh so that many readers
/// hitting one expired token refresh it once.
#[derive(Default)]
pub(super) struct AuthState {
    current: std::sync::Mutex<(u64, BlobAuth)>,
    refresh: tokio::sync::Mutex<()>,
}

impl AuthState {
    pub(super) fn generation(&self) -> u64 {
        self.get().0
    }

    fn get(&self) -> (u64, BlobAuth) {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, auth: BlobAuth) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = (current.0 + 1, auth);
    }
}

impl Registry {
    /// Authenticates for pulls (a token exchange when the registry asks for bearer tokens) and makes
    /// the result the credentials of blob requests.
    pub(super) async fn authenticate(&self) -> Result<(), SourceError> {
        let token = self
            .with_oci_retries(
                || self.client.auth(&self.repo_ref, &self.auth, RegistryOperation::Pull),
                || Target::Auth,
                false,
            )
            .await?;
        let auth = match (token, &self.auth) {
            (Some(token), _) => BlobAuth::Bearer(token),
            (None, RegistryAuth::Basic(user, password)) => {
                BlobAuth::Basic { user: user.clone(), password: password.clone() }
            }
            (None, _) => BlobAuth::Anonymous,
        };
        debug!(registry = %self.registry, auth = ?auth, "authenticated");
        self.auth_state.set(auth);
        Ok(())
    }

    /// Authenticates again after a 401 to a request made with credentials of `generation`, unless
    /// another request has done so meanwhile.
    /// Boxed: authenticating runs under the retry loop that calls this.
    pub(super) fn reauthenticate(&self, generation: u64) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let _one_at_a_time = self.auth_state.refresh.lock().await;
            if self.auth_state.generation() != generation {
                return Ok(());
            }
            debug!(registry = %self.registry, "registry answered 401 Unauthorized; authenticating again");
            self.authenticate().await
        }
        .boxed()
    }

    fn blob_url(&self, desc: &Descriptor) -> String {
        format!("{}://{}/v2/{}/blobs/{}", self.scheme, self.repo_ref.resolve_registry(), self.repository, desc.digest)
    }

    /// Sends one GET of the blob (of `range`, if given); returns the response when it is 200 or 206.
    async fn send_get(
        &self,
        desc: &Descriptor,
        range: Option<&Range<u64>>,
        auth: &BlobAuth,
    ) -> Result<Response, Failed> {
        let mut request = self.http.get(self.blob_url(desc));
        if let Some(r) = range {
            request = request.header(RANGE, format!("bytes={}-{}", r.start, r.end - 1));
        }
        let response = auth.apply(request).send().await.map_err(|e| self.send_failed(desc, e))?;
        let status = response.status();
        if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let excerpt = error_excerpt(response).await;
        let detail =
            format!("HTTP {status}{}", if excerpt.is_empty() { String::new() } else { format!(": {excerpt}") });
        let registry = self.registry.clone();
        let error = match status.as_u16() {
            404 => SourceError::BlobNotFound { digest: desc.digest.to_string(), location: self.describe() },
            401 | 403 => SourceError::Auth { registry, detail },
            _ => SourceError::Registry { registry, what: format!("blob {}", desc.digest), detail },
        };
        Err(Failed { error, verdict: verdict_for_status(status.as_u16(), retry_after) })
    }

    /// A request that got no answer: connection refused or reset, timeout, too many redirects.
    fn send_failed(&self, desc: &Descriptor, e: reqwest::Error) -> Failed {
        // Without the URL: a redirect target may carry a signed query string.
        let retryable = !e.is_redirect() && !e.is_builder();
        let connect = e.is_connect();
        let detail = error_chain(&e.without_url());
        let error = if connect {
            SourceError::Connect { registry: self.registry.clone(), detail }
        } else {
            SourceError::Transfer { digest: desc.digest.to_string(), location: self.describe(), detail }
        };
        Failed { error, verdict: if retryable { Verdict::Retry(None) } else { Verdict::Fail } }
    }

    /// After failed attempt `f` (made with credentials of `generation`): waits for the backoff or
    /// authenticates again when another attempt may follow, else returns the error to report.
    async fn before_retry(
        &self,
        desc: &Descriptor,
        f: Failed,
        tries: &mut Tries,
        generation: u64,
    ) -> Result<(), SourceError> {
        tries.failed += 1;
        match f.verdict {
            Verdict::Reauthenticate if !tries.reauthenticated => {
                tries.reauthenticated = true;
                self.reauthenticate(generation).await
            }
            Verdict::Retry(after) if self.retry.allows(tries.failed) => {
                let wait = self.retry.delay(tries.failed, after);
                self.retries.fetch_add(1, Ordering::Relaxed);
                debug!(
                    digest = %desc.digest, attempt = tries.failed, wait_ms = wait.as_millis() as u64, error = %f.error,
                    "blob request failed; retrying"
                );
                tokio::time::sleep(wait).await;
                Ok(())
            }
            _ => Err(f.error),
        }
    }

    /// Bytes `range` of a blob, retried and resumed as the module docs say.
    pub(super) async fn get_range(&self, desc: &Descriptor, range: Range<u64>) -> Result<Bytes, SourceError> {
        let len = range.end - range.start;
        let mut out = BytesMut::with_capacity(len.min(16 << 20) as usize);
        let mut tries = Tries::default();
        loop {
            let (generation, auth) = self.auth_state.get();
            // Resume after the bytes earlier attempts delivered.
            let rest = range.start + out.len() as u64..range.end;
            match self.range_attempt(desc, rest, &auth, &mut out).await {
                Ok(()) => return Ok(out.freeze()),
                Err(f) => self.before_retry(desc, f, &mut tries, generation).await?,
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
            let (generation, auth) = self.auth_state.get();
            self.counter.request();
            match self.send_get(desc, Some(&(0..1)), &auth).await {
                Ok(response) => {
                    let partial = response.status() == StatusCode::PARTIAL_CONTENT;
                    debug!(digest = %desc.digest, status = %response.status(), "range probe");
                    return Ok(partial);
                }
                Err(f) => self.before_retry(desc, f, &mut tries, generation).await?,
            }
        }
    }

    /// One Range GET of `range`, appending what arrives to `out`.
    async fn range_attempt(
        &self,
        desc: &Descriptor,
        range: Range<u64>,
        auth: &BlobAuth,
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
        while (out.len() as u64) < goal {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(Failed::retry(self.transfer_error(desc, error_chain(&e.without_url())))),
                None => {
                    let detail =
                        format!("response ended {} bytes short of the range asked for", goal - out.len() as u64);
                    return Err(Failed::retry(self.transfer_error(desc, detail)));
                }
            };
            self.counter.add_bytes(chunk.len());
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
            let (generation, auth) = self.auth_state.get();
            self.counter.request();
            let range = (offset > 0).then_some(offset..desc.size);
            let failed = match self.send_get(desc, range.as_ref(), &auth).await {
                Ok(response) if response.status() == StatusCode::PARTIAL_CONTENT => {
                    match content_range_start(&response) {
                        Some(first) if first != offset => {
                            let detail = format!("asked for bytes from {offset} and got a range from {first}");
                            Failed::retry(self.transfer_error(desc, detail))
                        }
                        _ => return Ok(Body { stream: response.bytes_stream().boxed(), skip: 0 }),
                    }
                }
                Ok(response) => return Ok(Body { stream: response.bytes_stream().boxed(), skip: offset }),
                Err(f) => f,
            };
            self.before_retry(desc, failed, tries, generation).await?;
        }
    }
}

/// A response body being streamed, and how many of its first bytes to drop.
struct Body {
    stream: BoxStream<'static, reqwest::Result<Bytes>>,
    skip: u64,
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
            let detail = match body.stream.next().await {
                Some(Ok(mut chunk)) => {
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
                Some(Err(e)) => error_chain(&e.without_url()),
                None if self.seen < self.desc.size => {
                    format!("the response ended after {} of {} bytes", self.seen, self.desc.size)
                }
                None => {
                    self.body = None;
                    return None;
                }
            };
            // Broken off: resume from where it stopped. Progress since the last failure earns a fresh
            // retry budget, so only a stall ends the stream.
            if std::mem::take(&mut self.progress) {
                self.tries = Tries::default();
            }
            let registry = Arc::clone(&self.registry);
            let failed = Failed::retry(registry.transfer_error(&self.desc, detail));
            let generation = registry.auth_state.generation();
            let resumed = match registry.before_retry(&self.desc, failed, &mut self.tries, generation).await {
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

/// Attempts of one request so far.
#[derive(Default)]
struct Tries {
    failed: u32,
    reauthenticated: bool,
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL` header.
fn content_range_start(response: &Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// The start of an error answer's body, for the error message (bounded in size and time).
async fn error_excerpt(response: Response) -> String {
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            text.extend_from_slice(&chunk[..chunk.len().min(512 - text.len())]);
            if text.len() >= 512 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    String::from_utf8_lossy(&text).split_whitespace().collect::<Vec<_>>().join(" ")
}
