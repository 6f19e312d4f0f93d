//! [`RegistrySource`]: one repository of an OCI distribution registry, through `oci-client`.
//!
//! Connecting resolves credentials (see [`registry_auth`]), picks HTTP or HTTPS (plain HTTP for
//! localhost, 127.0.0.0/8 and ::1 like Docker, or everywhere with `plain_http`) and performs the
//! token exchange once, so that auth and connection problems surface at `open` with a clear
//! message. Blob reads are streamed GETs and Range GETs made with reqwest (see `blobs`), retried
//! under the source's [`crate::RetryPolicy`]; manifest fetches go through `oci-client` under the same
//! policy. A 401 in the middle of a run re-authenticates once (expired token) and retries.

mod blobs;
mod credentials;
mod errors;

pub use credentials::registry_auth;

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tracing::debug;

use crate::digest::{media_types, Descriptor, Digest};
use crate::error::SourceError;
use crate::platform::Platform;
use crate::reference::{is_local_registry, ImageRef};
use crate::resolve::{verify, ManifestFetch, ResolvedImage, Resolver, MAX_MANIFEST_BYTES};
use crate::retry::{verdict_for_status, RetryPolicy, Verdict};
use crate::source::{check_range, BlobSource, BlobStream, CheckedStream, Counter, SourceStats};
use crate::SourceOptions;
use blobs::AuthState;
use errors::{error_chain, Target};

/// How long to wait for a TCP (and TLS) connection to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent while we wait for an answer or body bytes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Blobs and manifests of one registry repository. Cheap to clone (the state is shared), so a blob
/// stream can own what it needs to resume after a broken connection.
#[derive(Clone)]
pub struct RegistrySource(Arc<Registry>);

/// The state of a [`RegistrySource`].
pub(crate) struct Registry {
    /// For manifests and token exchanges.
    client: Client,
    /// For blob reads.
    http: reqwest::Client,
    /// `http` or `https`.
    scheme: &'static str,
    auth: RegistryAuth,
    /// The credentials blob reads carry (a bearer token from the exchange, or basic auth).
    auth_state: AuthState,
    /// `registry/repository`; used for blob URLs and the token scope.
    repo_ref: Reference,
    registry: String,
    repository: String,
    counter: Counter,
    retry: RetryPolicy,
    /// Attempts that failed and were retried.
    retries: AtomicU64,
    /// Set once we have warned that this registry ignores Range headers.
    range_ignored: AtomicBool,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

impl RegistrySource {
    /// Connects to `registry` for `repository`: finds credentials, checks the registry answers
    /// and obtains a pull token. Manifests are not fetched; use [`RegistrySource::resolve`].
    pub async fn connect(
        registry: &str,
        repository: &str,
        opts: &SourceOptions,
    ) -> Result<RegistrySource, SourceError> {
        let auth = registry_auth(registry, opts).await?;

        let repo_ref = Reference::with_tag(registry.to_owned(), repository.to_owned(), "latest".to_owned());
        let plain = opts.plain_http || is_local_registry(registry);
        let protocol = if plain {
            ClientProtocol::HttpsExcept(vec![repo_ref.resolve_registry().to_owned()])
        } else {
            ClientProtocol::Https
        };
        debug!(registry, repository, plain_http = plain, "connecting to registry");
        let client_config = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(IDLE_TIMEOUT),
            ..ClientConfig::default()
        };
        let setup = |detail: String| SourceError::Registry {
            registry: registry.to_owned(),
            what: "client setup".into(),
            detail,
        };
        let client = Client::try_from(client_config).map_err(|e| setup(error_chain(&e)))?;
        // reqwest follows up to 10 redirects (blob GETs are often sent on to a CDN or object store)
        // and drops the Authorization header when one leads to another host.
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(IDLE_TIMEOUT)
            .user_agent(concat!("clip/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(error_chain(&e)))?;
        let source = Registry {
            client,
            http,
            scheme: if plain { "http" } else { "https" },
            auth,
            auth_state: AuthState::default(),
            repo_ref,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            counter: Counter::default(),
            retry: opts.retry,
            retries: AtomicU64::new(0),
            range_ignored: AtomicBool::new(false),
        };
        source.authenticate().await?;
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
}

impl Registry {
    /// `registry HOST repository REPO`, for logs and errors.
    pub(super) fn describe(&self) -> String {
        format!("registry {} repository {}", self.registry, self.repository)
    }

    /// Runs an `oci-client` call under the retry policy: transient failures are retried with backoff;
    /// with `may_reauthenticate`, a 401 makes us authenticate again once and retry. The last error is
    /// classified for `target`.
    async fn with_oci_retries<'t, T, Fut>(
        &self,
        mut call: impl FnMut() -> Fut,
        target: impl Fn() -> Target<'t>,
        may_reauthenticate: bool,
    ) -> Result<T, SourceError>
    where
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut failed = 0u32;
        let mut reauthenticated = !may_reauthenticate;
        loop {
            let generation = self.auth_state.generation();
            let e = match call().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            failed += 1;
            match oci_verdict(&e) {
                Verdict::Reauthenticate if !reauthenticated => {
                    reauthenticated = true;
                    self.reauthenticate(generation).await?;
                }
                Verdict::Retry(after) if self.retry.allows(failed) => {
                    let wait = self.retry.delay(failed, after);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        registry = %self.registry, attempt = failed, wait_ms = wait.as_millis() as u64,
                        error = %error_chain(&e), "registry request failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(self.classify(e, target())),
            }
        }
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
                (tag.as_deref(), digest.as_deref())
            }
            _ => {
                return Err(SourceError::InvalidReference {
                    input: reference.to_string(),
                    reason: format!("it is not an image of {}", self.describe()),
                })
            }
        };
        let (top_ref, target, wanted) = match digest {
            Some(d) => {
                let d: Digest = d.parse()?;
                (self.with_digest(&d), Target::Manifest(reference, d.clone()), Some(d))
            }
            None => {
                let tag = tag.unwrap_or("latest");
                let r = Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.to_owned());
                (r, Target::Tag(reference, tag.to_owned()), None)
            }
        };
        let (bytes, _) = self
            .with_oci_retries(
                || self.client.pull_manifest_raw(&top_ref, &self.auth, &media_types::MANIFESTS),
                || target.clone(),
                true,
            )
            .await?;
        let manifest_digest = match wanted {
            Some(d) => {
                verify("manifest", &self.describe(), &d, &bytes)?;
                d
            }
            None => Digest::of(&bytes),
        };
        self.check_manifest_size(&manifest_digest, bytes.len())?;
        let resolver = Resolver { fetch: self, blobs, reference, platform };
        resolver.resolve_bytes(bytes.to_vec(), manifest_digest).await
    }

    fn with_digest(&self, digest: &Digest) -> Reference {
        Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_string())
    }

    fn check_manifest_size(&self, digest: &Digest, len: usize) -> Result<(), SourceError> {
        if len as u64 > MAX_MANIFEST_BYTES {
            return Err(SourceError::TooLarge {
                what: "manifest",
                digest: digest.to_string(),
                size: len as u64,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        Ok(())
    }

    fn transfer_error(&self, desc: &Descriptor, detail: String) -> SourceError {
        SourceError::Transfer { digest: desc.digest.to_string(), location: self.describe(), detail }
    }
}

impl ManifestFetch for Registry {
    fn fetch_manifest<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>, SourceError>> {
        async move {
            let reference = self.with_digest(digest);
            let (bytes, _) = self
                .with_oci_retries(
                    || self.client.pull_manifest_raw(&reference, &self.auth, &media_types::MANIFESTS),
                    || Target::ChildManifest(digest.clone()),
                    true,
                )
                .await?;
            self.check_manifest_size(digest, bytes.len())?;
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

    fn read_range<'a>(&'a self, desc: &'a Descriptor, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move {
            check_range(desc, &range)?;
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            self.0.get_range(desc, range).await
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn stats(&self) -> SourceStats {
        self.0.counter.stats()
    }
}

/// What to do about a failed `oci-client` call.
fn oci_verdict(e: &OciDistributionError) -> Verdict {
    use OciDistributionError as E;
    match e {
        E::ServerError { code, .. } => verdict_for_status(*code, None),
        E::UnauthorizedError { .. } => Verdict::Reauthenticate,
        E::RegistryError { envelope, .. } => {
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| matches!(c, OciErrorCode::Toomanyrequests)) {
                Verdict::Retry(None)
            } else if codes().any(|c| matches!(c, OciErrorCode::Unauthorized)) {
                Verdict::Reauthenticate
            } else {
                Verdict::Fail
            }
        }
        E::RequestError(r) if !r.is_redirect() && !r.is_builder() => Verdict::Retry(None),
        _ => Verdict::Fail,
    }
}
