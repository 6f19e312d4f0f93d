//! [`RegistrySource`]: one repository of an OCI distribution registry, through `oci-client`.
//!
//! Connecting resolves credentials (see `credentials`), picks HTTP or HTTPS (plain HTTP for
//! localhost, 127.0.0.0/8 and ::1 like Docker, or everywhere with `plain_http`) and performs the
//! token exchange once, so that auth and connection problems surface at `open` with a clear
//! message. Blob reads are streamed GETs and Range GETs; tokens are refreshed by the client.

mod credentials;
mod errors;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, SizedStream};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tracing::{debug, warn};

use crate::digest::{media_types, Descriptor, Digest};
use crate::error::SourceError;
use crate::platform::Platform;
use crate::reference::{is_local_registry, ImageRef};
use crate::resolve::{verify, ManifestFetch, ResolvedImage, Resolver, MAX_MANIFEST_BYTES};
use crate::source::{check_range, BlobSource, BlobStream, CheckedStream, Counter, SourceStats};
use crate::SourceOptions;
use errors::{error_chain, Target};

/// Blobs and manifests of one registry repository.
pub struct RegistrySource {
    client: Client,
    auth: RegistryAuth,
    /// `registry/repository`; used for blob URLs and the token scope.
    repo_ref: Reference,
    registry: String,
    repository: String,
    counter: Counter,
    /// Set once we have warned that this registry ignores Range headers.
    range_ignored: AtomicBool,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
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
        let host = registry.to_owned();
        let config = opts.docker_config.clone();
        let auth = tokio::task::spawn_blocking(move || {
            credentials::credentials_for(&host, config.as_deref(), &credentials::default_helper_dirs())
        })
        .await
        .map_err(|e| SourceError::Registry {
            registry: registry.to_owned(),
            what: "credential lookup".into(),
            detail: e.to_string(),
        })??;

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
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(client_config).map_err(|e| SourceError::Registry {
            registry: registry.to_owned(),
            what: "client setup".into(),
            detail: error_chain(&e),
        })?;
        let source = RegistrySource {
            client,
            auth,
            repo_ref,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            counter: Counter::default(),
            range_ignored: AtomicBool::new(false),
        };
        source
            .client
            .auth(&source.repo_ref, &source.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| source.classify(e, Target::Auth))?;
        Ok(source)
    }

    /// The registry host.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Resolves a registry reference in this repository to one image for `platform`.
    pub async fn resolve(&self, reference: &ImageRef, platform: &Platform) -> Result<ResolvedImage, SourceError> {
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
            .client
            .pull_manifest_raw(&top_ref, &self.auth, &media_types::MANIFESTS)
            .await
            .map_err(|e| self.classify(e, target))?;
        let manifest_digest = match wanted {
            Some(d) => {
                verify("manifest", &self.describe(), &d, &bytes)?;
                d
            }
            None => Digest::of(&bytes),
        };
        self.check_manifest_size(&manifest_digest, bytes.len())?;
        let resolver = Resolver { fetch: self, blobs: self, reference, platform };
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

    /// A raw blob response body as a stream of our errors, counting nothing yet.
    fn body(
        &self,
        desc: &Descriptor,
        sized: SizedStream,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, SourceError>> {
        let digest = desc.digest.to_string();
        let location = self.describe();
        sized
            .stream
            .map_err(move |e| SourceError::Transfer {
                digest: digest.clone(),
                location: location.clone(),
                detail: error_chain(&e),
            })
            .boxed()
    }

    /// Collects `len` bytes from `body` after skipping `skip` bytes, counting everything received.
    async fn collect_range(
        &self,
        desc: &Descriptor,
        mut body: futures::stream::BoxStream<'static, Result<Bytes, SourceError>>,
        mut skip: u64,
        len: u64,
    ) -> Result<Bytes, SourceError> {
        let mut out = BytesMut::with_capacity(len.min(16 << 20) as usize);
        while (out.len() as u64) < len {
            let Some(chunk) = body.next().await else {
                return Err(
                    self.transfer_error(desc, format!("response ended after {} of {len} requested bytes", out.len()))
                );
            };
            let mut chunk = chunk?;
            self.counter.add_bytes(chunk.len());
            if skip > 0 {
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                chunk = chunk.slice(dropped as usize..);
            }
            let want = (len - out.len() as u64).min(chunk.len() as u64) as usize;
            out.extend_from_slice(&chunk[..want]);
        }
        Ok(out.freeze())
    }
}

impl ManifestFetch for RegistrySource {
    fn fetch_manifest<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>, SourceError>> {
        async move {
            let reference = self.with_digest(digest);
            let (bytes, _) = self
                .client
                .pull_manifest_raw(&reference, &self.auth, &media_types::MANIFESTS)
                .await
                .map_err(|e| self.classify(e, Target::ChildManifest(digest.clone())))?;
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
            self.counter.request();
            debug!(digest = %desc.digest, size = desc.size, "GET blob");
            let sized = self
                .client
                .pull_blob_stream(&self.repo_ref, desc.digest.as_str())
                .await
                .map_err(|e| self.classify(e, Target::Blob(desc.digest.clone())))?;
            let body = self.body(desc, sized);
            let checked = CheckedStream::new(body, self.counter.clone(), desc, self.describe());
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
            let len = range.end - range.start;
            self.counter.request();
            debug!(digest = %desc.digest, offset = range.start, len, "GET blob range");
            let response = self
                .client
                .pull_blob_stream_partial(&self.repo_ref, desc.digest.as_str(), range.start, Some(len))
                .await
                .map_err(|e| self.classify(e, Target::Blob(desc.digest.clone())))?;
            match response {
                BlobResponse::Partial(sized) => {
                    let body = self.body(desc, sized);
                    self.collect_range(desc, body, 0, len).await
                }
                BlobResponse::Full(sized) => {
                    // The registry ignored the Range header: skip to the offset while streaming
                    // and hang up once we have the bytes, never holding the whole blob.
                    if !self.range_ignored.swap(true, Ordering::Relaxed) {
                        warn!(
                            registry = %self.registry,
                            digest = %desc.digest,
                            offset = range.start,
                            "registry ignores Range requests and sends whole blobs; skipping to offsets while streaming"
                        );
                    }
                    let body = self.body(desc, sized);
                    self.collect_range(desc, body, range.start, len).await
                }
            }
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("registry {} repository {}", self.registry, self.repository)
    }

    fn stats(&self) -> SourceStats {
        self.counter.stats()
    }
}
