//! [`RegistrySource`]: one repository of an OCI distribution registry, the one registry client of clip.
//!
//! Connecting resolves credentials (see [`registry_auth`]), picks HTTP or HTTPS (plain HTTP for
//! localhost, 127.0.0.0/8 and ::1 like Docker, or everywhere with `plain_http`) and performs the
//! token exchange once (`auth`), so that auth and connection problems surface at `open` with a clear
//! message. Every request is made with reqwest under the source's [`crate::RetryPolicy`] (`request`):
//! transient failures are retried with backoff, a 401 in the middle of a run re-authenticates once
//! (expired token) and retries, bodies slower than the rate floor fail. Manifests and other small
//! answers are read into memory under a size cap; blobs are streamed (`blobs`). Pushing blobs and
//! manifests and listing referrers (`push`) go through the same requests, for publishing indexes.

mod auth;
mod blobs;
mod credentials;
mod push;
mod request;
mod tls;

pub use auth::{Access, RegistryAuth, MAX_TOKEN_BYTES};
pub use credentials::registry_auth;
pub use push::{referrers_tag, ReferrerEntry};

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::header::ACCEPT;
use tracing::{debug, warn};

use crate::digest::{media_types, Descriptor, Digest};
use crate::error::SourceError;
use crate::platform::Platform;
use crate::reference::{is_local_registry, ImageRef, DOCKER_HUB};
use crate::resolve::{verify, ManifestFetch, ResolvedImage, Resolver, MAX_MANIFEST_BYTES};
use crate::retry::RetryPolicy;
use crate::source::{BlobSource, BlobStream, CheckedStream, Counter, SourceStats};
use crate::SourceOptions;
use auth::AuthState;
use request::{error_chain, Target};

/// How long to wait for a TCP (and TLS) connection to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent while we wait for an answer or body bytes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a lazily connected source waits for the registry's first answer before warning that it is slow
/// or down (it goes on waiting; see [`RegistrySource::connect_lazily`]).
const SLOW_REGISTRY: Duration = Duration::from_secs(2);

/// Blobs and manifests of one registry repository. Cheap to clone (the state is shared), so a blob
/// stream can own what it needs to resume after a broken connection.
#[derive(Clone)]
pub struct RegistrySource(Arc<Registry>);

/// The state of a [`RegistrySource`].
pub(crate) struct Registry {
    http: reqwest::Client,
    /// `http` or `https`.
    scheme: &'static str,
    /// The host requests go to (`registry-1.docker.io` for `docker.io`).
    host: String,
    /// The user's credentials.
    auth: RegistryAuth,
    /// What the token is asked for.
    access: Access,
    /// The credentials requests carry (a bearer token from the exchange, or basic auth).
    auth_state: AuthState,
    registry: String,
    repository: String,
    counter: Counter,
    retry: RetryPolicy,
    /// Attempts that failed and were retried.
    retries: AtomicU64,
    /// Set once we have warned that this registry ignores Range headers.
    range_ignored: AtomicBool,
    /// Set while a warning that the registry is slow or down stands: the next successful authentication
    /// says it answers again.
    reported_down: AtomicBool,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

impl RegistrySource {
    /// Connects to `registry` for pulls from `repository`: finds credentials, checks the registry answers
    /// and obtains a pull token. Manifests are not fetched; use [`RegistrySource::resolve`].
    pub async fn connect(
        registry: &str,
        repository: &str,
        opts: &SourceOptions,
    ) -> Result<RegistrySource, SourceError> {
        Self::connect_for(registry, repository, opts, Access::Pull).await
    }

    /// Connects like [`RegistrySource::connect`], with a token for `access` (use [`Access::Push`] to push).
    pub async fn connect_for(
        registry: &str,
        repository: &str,
        opts: &SourceOptions,
        access: Access,
    ) -> Result<RegistrySource, SourceError> {
        let source = Self::unconnected(registry, repository, opts, access).await?;
        source.0.authenticate().await?;
        Ok(source)
    }

    /// A pull source that does not wait for the registry: it finds the credentials and starts checking the
    /// registry and obtaining a token in the background. Requests do not wait for that: the first goes out
    /// at once with the user's credentials as they are (what an open registry takes, saving a cold start
    /// the check's round trip), and one the registry answers 401 waits for the token. A registry that
    /// cannot be reached fails that request, not this call (and a warning is logged once it has not answered
    /// for 2 s), so a reader whose cache holds what it needs starts, and serves, without one.
    /// Needs a tokio runtime.
    pub async fn connect_lazily(
        registry: &str,
        repository: &str,
        opts: &SourceOptions,
    ) -> Result<RegistrySource, SourceError> {
        let source = Self::unconnected(registry, repository, opts, Access::Pull).await?;
        let inner = Arc::clone(&source.0);
        let assumed = inner.assume_user_credentials();
        tokio::spawn(async move {
            let registry = inner.registry.clone();
            let check = inner.authenticate_after(assumed);
            tokio::pin!(check);
            let done = match tokio::time::timeout(SLOW_REGISTRY, &mut check).await {
                Ok(done) => done.map(drop),
                Err(_) => {
                    inner.reported_down.store(true, Ordering::Relaxed);
                    warn!(
                        %registry,
                        "the registry has not answered for {} s: reads of content the cache does not hold wait for it",
                        SLOW_REGISTRY.as_secs()
                    );
                    check.await.map(drop)
                }
            };
            if let Err(error) = done {
                inner.reported_down.store(true, Ordering::Relaxed);
                warn!(
                    %registry,
                    %error,
                    "the registry cannot be reached: reads of content the cache does not hold fail until it answers"
                );
            }
        });
        Ok(source)
    }

    /// The source with its credentials found, before any request.
    async fn unconnected(
        registry: &str,
        repository: &str,
        opts: &SourceOptions,
        access: Access,
    ) -> Result<RegistrySource, SourceError> {
        let auth = registry_auth(registry, opts).await?;
        let plain = opts.plain_http || is_local_registry(registry);
        debug!(registry, repository, plain_http = plain, ?access, "connecting to registry");
        // reqwest follows up to 10 redirects (blob GETs are often sent on to a CDN or object store)
        // and drops the Authorization header when one leads to another host.
        let setup = |detail: String| SourceError::Registry {
            registry: registry.to_owned(),
            what: "client setup".into(),
            detail,
        };
        let tls = tls::client_config().map_err(|e| setup(error_chain(&e)))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(IDLE_TIMEOUT)
            .user_agent(concat!("clip/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(error_chain(&e)))?;
        let host = if registry == DOCKER_HUB { "registry-1.docker.io".to_owned() } else { registry.to_owned() };
        let source = Registry {
            http,
            scheme: if plain { "http" } else { "https" },
            host,
            auth,
            access,
            auth_state: AuthState::default(),
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            counter: Counter::default(),
            retry: opts.retry,
            retries: AtomicU64::new(0),
            range_ignored: AtomicBool::new(false),
            reported_down: AtomicBool::new(false),
        };
        Ok(RegistrySource(Arc::new(source)))
    }

    /// Registry requests that failed and were tried again, so far.
    pub fn retries(&self) -> u64 {
        self.0.retries.load(Ordering::Relaxed)
    }

    /// The registry host.
    pub fn registry(&self) -> &str {
        &self.0.registry
    }

    /// The repository path.
    pub fn repository(&self) -> &str {
        &self.0.repository
    }

    /// Whether the registry serves byte ranges of the blob `desc` (`Range` answered with
    /// `206 Partial Content`), asked with one GET of its first byte. `false`: it answers `200` with the
    /// whole blob, so every lazy read would download the blob from its start (reads still work: see
    /// `blobs`, but slowly). Empty blobs count as supporting ranges.
    pub async fn supports_range(&self, desc: &Descriptor) -> Result<bool, SourceError> {
        self.0.probe_range(desc).await
    }

    /// Resolves a registry reference in this repository to one image for `platform`.
    pub async fn resolve(&self, reference: &ImageRef, platform: &Platform) -> Result<ResolvedImage, SourceError> {
        self.0.resolve(reference, platform, self).await
    }

    /// The manifest (or index) tagged or with digest `reference`, as stored, with one of the `accept`ed
    /// media types; at most [`MAX_MANIFEST_BYTES`]. A digest reference is verified. A missing one is
    /// [`SourceError::TagNotFound`] or [`SourceError::ManifestNotFound`].
    pub async fn manifest(&self, reference: &str, accept: &[&str]) -> Result<Bytes, SourceError> {
        let tagged = ImageRef::Registry {
            registry: self.0.registry.clone(),
            repository: self.0.repository.clone(),
            tag: Some(reference.to_owned()),
            digest: None,
        };
        let digest = reference.parse::<Digest>().ok();
        let target = match &digest {
            Some(d) => Target::ChildManifest(*d),
            None => Target::Tag(&tagged, reference.to_owned()),
        };
        let bytes = self.0.get_manifest(reference, accept, &target).await?;
        if let Some(d) = digest {
            verify("manifest", &self.0.describe(), &d, &bytes)?;
        }
        Ok(bytes)
    }

    /// A whole blob read into memory, refusing one larger than `limit` (checked against `desc.size`
    /// before reading, and while reading). Not verified: callers hash what they need.
    pub async fn read_small_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, SourceError> {
        crate::source::read_to_vec(self, desc, "blob", limit).await
    }
}

impl Registry {
    /// `registry HOST repository REPO`, for logs and errors.
    pub(super) fn describe(&self) -> String {
        format!("registry {} repository {}", self.registry, self.repository)
    }

    async fn resolve(
        &self,
        reference: &ImageRef,
        platform: &Platform,
        blobs: &RegistrySource,
    ) -> Result<ResolvedImage, SourceError> {
        let (tag, digest) = match reference {
            ImageRef::Registry { registry, repository, tag, digest }
                if *registry == self.registry && *repository == self.repository =>
            {
                (tag.as_deref(), *digest)
            }
            _ => {
                return Err(SourceError::InvalidReference {
                    input: reference.to_string(),
                    reason: format!("it is not an image of {}", self.describe()),
                })
            }
        };
        let (name, target, wanted) = match digest {
            Some(d) => (d.to_string(), Target::Manifest(reference, d), Some(d)),
            None => {
                let tag = tag.unwrap_or("latest");
                (tag.to_owned(), Target::Tag(reference, tag.to_owned()), None)
            }
        };
        let bytes = self.get_manifest(&name, &media_types::MANIFESTS, &target).await?;
        let manifest_digest = match wanted {
            Some(d) => {
                verify("manifest", &self.describe(), &d, &bytes)?;
                d
            }
            None => Digest::of(&bytes),
        };
        let resolver = Resolver { fetch: self, blobs, reference, platform };
        resolver.resolve_bytes(bytes.to_vec(), manifest_digest).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}/v2/{}/{path}", self.scheme, self.host, self.repository)
    }

    /// GETs the manifest `reference` (a tag or digest) under the retry policy, at most
    /// [`MAX_MANIFEST_BYTES`].
    async fn get_manifest(&self, reference: &str, accept: &[&str], target: &Target<'_>) -> Result<Bytes, SourceError> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = accept.join(", ");
        let answer = self
            .call(target, &[], MAX_MANIFEST_BYTES, |auth| auth.apply(self.http.get(&url).header(ACCEPT, &accept)))
            .await?;
        Ok(answer.body)
    }

    fn transfer_error(&self, desc: &Descriptor, detail: String) -> SourceError {
        SourceError::Transfer { digest: desc.digest.to_string(), location: self.describe(), detail }
    }
}

impl ManifestFetch for Registry {
    fn fetch_manifest<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>, SourceError>> {
        async move {
            let bytes = self
                .get_manifest(&digest.to_string(), &media_types::MANIFESTS, &Target::ChildManifest(*digest))
                .await?;
            verify("manifest", &self.describe(), digest, &bytes)?;
            Ok(bytes.to_vec())
        }
        .boxed()
    }
}

impl BlobSource for RegistrySource {
    fn open_blob<'a>(&'a self, desc: &'a Descriptor) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        async move {
            let body = Arc::clone(&self.0).get_whole(desc).await?;
            let checked = CheckedStream::new(body, self.0.counter.clone(), desc, self.0.describe());
            Ok(Box::pin(checked) as BlobStream)
        }
        .boxed()
    }

    fn read_checked_range<'a>(
        &'a self,
        desc: &'a Descriptor,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move { self.0.get_range(desc, range).await }.boxed()
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn stats(&self) -> SourceStats {
        self.0.counter.stats()
    }
}
