//! Image sources: an OCI registry client and an OCI image layout reader behind one
//! [`BlobSource`] trait (layer 2 of clip's design).
//!
//! The rest of clip uses this crate for two things:
//! 1. resolve an [`ImageRef`] to one platform's manifest, layer list and parsed config — a
//!    [`ResolvedImage`] — with [`open`];
//! 2. read blobs, whole as a stream or by byte range, through the [`BlobSource`] that [`open`]
//!    (or [`connect`], when the manifest is already known) returns.
//!
//! Sources: [`RegistrySource`] (any OCI distribution registry: anonymous, basic and bearer-token
//! auth with credentials from Docker's config.json and credential helpers; Docker v2 schema 2 and
//! OCI manifests, manifest lists and image indexes) and [`LayoutSource`] (a local OCI image layout
//! as written by skopeo or umoci).
//!
//! Registry credentials come from Docker's config ([`registry_auth`]: `$DOCKER_CONFIG`, credential
//! helpers); every registry request clip makes goes through [`RegistrySource`] (pushes and referrers
//! included, see [`Access`]), so retries, size caps and auth live in one place.
//!
//! Registry requests are retried under a [`RetryPolicy`] (backoff with jitter, `Retry-After`,
//! re-authentication on 401); see the `retry` module.
//!
//! What this crate does not do: verify layer digests (the indexer and the content store hash
//! what they read; manifests and configs are verified here), decompress, cache, or bound the time
//! of a read (callers put a deadline around it).
//!
//! ```no_run
//! # async fn demo() -> Result<(), clip_source::SourceError> {
//! use clip_source::{open, ImageRef, SourceOptions};
//! let reference: ImageRef = "127.0.0.1:5000/app:v1".parse()?;
//! let (image, blobs) = open(&reference, &SourceOptions::default()).await?;
//! let first = &image.layers[0];
//! let header = blobs.read_range(first, 0..512).await?;
//! assert_eq!(header.len(), 512.min(first.size as usize));
//! # Ok(()) }
//! ```

mod config;
mod digest;
mod error;
mod layout;
mod platform;
mod reference;
mod registry;
mod resolve;
mod retry;
mod source;

use std::path::PathBuf;
use std::sync::Arc;

pub use clip_format::Compression;
pub use config::ImageConfig;
pub use digest::{media_types, parse_digest, Descriptor, Digest};
pub use error::{error_chain, SourceError};
pub use layout::LayoutSource;
pub use platform::Platform;
pub use reference::{is_local_registry, ImageRef, DOCKER_HUB};
pub use registry::referrers_tag;
pub use registry::{registry_auth, Access, ReferrerEntry, RegistryAuth, RegistrySource, MAX_TOKEN_BYTES};
pub use resolve::{parse_image_config, parse_manifest, IndexEntry, ParsedManifest, ResolvedImage};
pub use retry::RetryPolicy;
pub use source::{download_verified, BlobSource, BlobStream, SourceStats};

/// How to reach and resolve an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// The platform to pick from manifest lists / image indexes. Default: [`Platform::host`].
    pub platform: Platform,
    /// Use plain HTTP for every registry. Registries on localhost, 127.0.0.0/8 and `[::1]` use
    /// plain HTTP regardless, like Docker.
    pub plain_http: bool,
    /// The Docker config file (or a directory holding `config.json`) to take credentials from.
    /// Default: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, else anonymous.
    pub docker_config: Option<PathBuf>,
    /// How failed registry requests are retried.
    pub retry: RetryPolicy,
    /// [`connect`] does not wait for the registry ([`RegistrySource::connect_lazily`]): for a mount that
    /// should start, and serve its cache, while the registry is slow or down (`clip mount`). Off, it checks
    /// the registry first and fails when it cannot be reached (what a node's run needs to fall back to v1).
    pub connect_in_background: bool,
}

/// Resolves `reference` to one image for `opts.platform` and returns it with the source to read
/// its blobs from. Reads manifests and the config blob (counted in the source's
/// [`SourceStats`]), no layer bytes.
pub async fn open(
    reference: &ImageRef,
    opts: &SourceOptions,
) -> Result<(ResolvedImage, Arc<dyn BlobSource>), SourceError> {
    match reference {
        ImageRef::Registry { registry, repository, .. } => {
            let source = RegistrySource::connect(registry, repository, opts).await?;
            let image = source.resolve(reference, &opts.platform).await?;
            Ok((image, Arc::new(source)))
        }
        ImageRef::Layout { dir, .. } => {
            let source = LayoutSource::new(dir);
            let image = source.resolve(reference, &opts.platform).await?;
            Ok((image, Arc::new(source)))
        }
    }
}

/// A blob source for `reference` without resolving any manifest: for readers that already know
/// their descriptors (a mount of an existing index). A registry source checks the registry and
/// authenticates here, or, with [`SourceOptions::connect_in_background`], in the background
/// ([`RegistrySource::connect_lazily`]: a mount whose cache holds what it reads then needs no round trip to
/// start, and starts while the registry is down; needs a tokio runtime).
pub async fn connect(reference: &ImageRef, opts: &SourceOptions) -> Result<Arc<dyn BlobSource>, SourceError> {
    Ok(match reference {
        ImageRef::Registry { registry, repository, .. } if opts.connect_in_background => {
            Arc::new(RegistrySource::connect_lazily(registry, repository, opts).await?)
        }
        ImageRef::Registry { registry, repository, .. } => {
            Arc::new(RegistrySource::connect(registry, repository, opts).await?)
        }
        ImageRef::Layout { dir, .. } => Arc::new(LayoutSource::new(dir)),
    })
}
