//! What every registry request shares: naming what it was after ([`Target`]), turning a failed attempt
//! into a [`SourceError`] and a retry verdict, waiting or re-authenticating before the next attempt
//! ([`Registry::before_retry`]), and reading a small answer into memory under a cap ([`read_capped`]).

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use tracing::debug;

use super::auth::RequestAuth;
use super::Registry;
use crate::digest::Digest;
pub(crate) use crate::error::error_chain;
use crate::error::SourceError;
use crate::reference::ImageRef;
use crate::retry::{parse_retry_after, verdict_for_status, Failed, Pace, Tries, Verdict};

/// What a registry request was after: names it in errors and says what a 404 means.
#[derive(Clone, Debug)]
pub(crate) enum Target<'a> {
    /// First contact (`GET /v2/`).
    Auth,
    /// The token service at this realm.
    Token(&'a str),
    /// A tag of the user's reference.
    Tag(&'a ImageRef, String),
    /// A manifest digest of the user's reference.
    Manifest(&'a ImageRef, Digest),
    /// A manifest by digest (reached through an index, or an artifact).
    ChildManifest(Digest),
    /// A blob.
    Blob(&'a Digest),
    /// Anything else, by what it does ("pushing a blob", "listing referrers of sha256:…").
    Other(String),
}

impl Target<'_> {
    /// What the request did, for error messages.
    pub(crate) fn what(&self) -> String {
        match self {
            Target::Auth => "authentication".into(),
            Target::Token(realm) => format!("the token request to {}", strip_query(realm)),
            Target::Tag(_, tag) => format!("manifest {tag}"),
            Target::Manifest(_, d) | Target::ChildManifest(d) => format!("manifest {d}"),
            Target::Blob(d) => format!("blob {d}"),
            Target::Other(what) => what.clone(),
        }
    }
}

/// `url` without its query (a signed redirect URL carries secrets there).
fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

impl Registry {
    /// An error for an answer of `target` we cannot use.
    pub(super) fn registry_error(&self, target: &Target<'_>, detail: String) -> SourceError {
        SourceError::Registry { registry: self.registry.clone(), what: target.what(), detail }
    }

    /// A request that got an answer other than success: the error for `target` and the verdict.
    pub(super) async fn status_failed(&self, response: Response, target: &Target<'_>) -> Failed {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let excerpt = error_excerpt(response).await;
        let detail =
            format!("HTTP {status}{}", if excerpt.is_empty() { String::new() } else { format!(": {excerpt}") });
        let registry = self.registry.clone();
        let error = match (status.as_u16(), target) {
            (401 | 403, _) => SourceError::Auth { registry, detail },
            (404, Target::Tag(reference, tag)) => {
                SourceError::TagNotFound { reference: reference.to_string(), registry, tag: tag.clone() }
            }
            (404, Target::Manifest(reference, digest)) => {
                SourceError::ManifestNotFound { reference: reference.to_string(), registry, digest: digest.to_string() }
            }
            (404, Target::ChildManifest(digest)) => SourceError::ManifestNotFound {
                reference: format!("{}/{}", self.registry, self.repository),
                registry,
                digest: digest.to_string(),
            },
            (404, Target::Blob(digest)) => {
                SourceError::BlobNotFound { digest: digest.to_string(), location: self.describe() }
            }
            (404, Target::Auth) => SourceError::Registry {
                registry,
                what: "the /v2/ endpoint".into(),
                detail: "not found (is this an OCI registry?)".into(),
            },
            _ => SourceError::Registry { registry, what: target.what(), detail },
        };
        Failed { error, verdict: verdict_for_status(status.as_u16(), retry_after) }
    }

    /// The registry answered a request: logs its return if it was reported down.
    pub(super) fn answered(&self) {
        if self.reported_down.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(registry = %self.registry, "the registry answers");
        }
    }

    /// A request that got no answer: connection refused or reset, timeout, too many redirects.
    pub(super) fn send_failed(&self, e: reqwest::Error, target: &Target<'_>) -> Failed {
        // Without the URL: a redirect target may carry a signed query string.
        let retryable = !e.is_redirect() && !e.is_builder();
        let connect = e.is_connect();
        let detail = error_chain(&e.without_url());
        let error = match target {
            _ if connect => SourceError::Connect { registry: self.registry.clone(), detail },
            Target::Blob(digest) => {
                SourceError::Transfer { digest: digest.to_string(), location: self.describe(), detail }
            }
            _ => self.registry_error(target, detail),
        };
        Failed { error, verdict: if retryable { Verdict::Retry(None) } else { Verdict::Fail } }
    }

    /// After failed attempt `f` of `target` (made with credentials of `generation`; `None` for requests
    /// that must not re-authenticate, such as the token exchange itself): waits for the backoff or
    /// authenticates again when another attempt may follow, else returns the error to report.
    pub(super) async fn before_retry(
        &self,
        target: &Target<'_>,
        f: Failed,
        tries: &mut Tries,
        generation: Option<u64>,
    ) -> Result<(), SourceError> {
        tries.fail();
        match f.verdict {
            Verdict::Reauthenticate if !tries.reauthenticated && generation.is_some() => {
                tries.reauthenticated = true;
                self.reauthenticate(generation.unwrap_or_default()).await
            }
            Verdict::Retry(after) if self.retry.allows_tries(tries) => {
                let wait = self.retry.delay(tries.failed, after);
                self.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(
                    registry = %self.registry, what = %target.what(), attempt = tries.total,
                    wait_ms = wait.as_millis() as u64, error = %f.error, "registry request failed; retrying"
                );
                tokio::time::sleep(wait).await;
                Ok(())
            }
            _ => Err(f.error),
        }
    }
}

/// A registry answer read whole (see [`Registry::call`]).
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Registry {
    /// Sends the request `build` makes with the current credentials under the retry policy, until an
    /// answer comes that is a success or one of the `also` statuses (e.g. 404 when "none" is an
    /// answer); reads its body, at most `cap` bytes (`0`: the body is not read). Other answers become
    /// errors for `target`.
    pub(super) async fn call(
        &self,
        target: &Target<'_>,
        also: &[StatusCode],
        cap: u64,
        build: impl Fn(&RequestAuth) -> RequestBuilder,
    ) -> Result<Answer, SourceError> {
        let mut tries = Tries::default();
        loop {
            let (generation, auth) = self.authenticated().await?;
            let attempt = async {
                let response = match build(&auth).send().await {
                    Ok(r) if r.status().is_success() || also.contains(&r.status()) => {
                        self.answered();
                        r
                    }
                    Ok(r) => return Err(self.status_failed(r, target).await),
                    Err(e) => return Err(self.send_failed(e, target)),
                };
                let (status, headers) = (response.status(), response.headers().clone());
                let body = if cap == 0 { Bytes::new() } else { read_capped(response, cap, target, self).await? };
                Ok(Answer { status, headers, body })
            };
            match attempt.await {
                Ok(answer) => return Ok(answer),
                Err(f) => self.before_retry(target, f, &mut tries, Some(generation)).await?,
            }
        }
    }
}

/// Reads a whole answer of `target` into memory, at most `cap` bytes (a longer one fails at once,
/// whatever it declares: no endless body can grow memory) and no slower than the rate floor.
pub(super) async fn read_capped(
    response: Response,
    cap: u64,
    target: &Target<'_>,
    registry: &Registry,
) -> Result<Bytes, Failed> {
    let url = strip_query(response.url().as_str()).to_owned();
    let too_large = || Failed::fail(SourceError::AnswerTooLarge { what: target.what(), url: url.clone(), limit: cap });
    let declared = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(too_large());
    }
    let mut out = BytesMut::with_capacity(declared.unwrap_or(0).min(cap) as usize);
    let mut body = response.bytes_stream();
    let mut pace = Pace::new(&registry.retry);
    loop {
        let item =
            pace.next(&mut body).await.map_err(|detail| Failed::retry(registry.registry_error(target, detail)))?;
        let chunk = match item {
            None => return Ok(out.freeze()),
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(Failed::retry(registry.registry_error(target, error_chain(&e.without_url())))),
        };
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
        pace.add(chunk.len()).map_err(|detail| Failed::retry(registry.registry_error(target, detail)))?;
    }
}

/// The start of an error answer's body, for the error message (bounded in size and time).
pub(super) async fn error_excerpt(response: Response) -> String {
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
    let text = String::from_utf8_lossy(&text).split_whitespace().collect::<Vec<_>>().join(" ");
    // Control characters from a hostile registry never reach the terminal.
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}
