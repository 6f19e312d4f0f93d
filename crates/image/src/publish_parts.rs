//! Layer parts published with an index. When [`crate::publish_index`] publishes an index next to its image,
//! the parts of the image's layers go with it, as further layers of the same artifact: media type
//! [`PART_LAYER_MEDIA_TYPE`], titled `<part key>.part` (`org.opencontainers.image.title`), after the index
//! (layer 0, which is all that a client needing the merged tree reads). Blobs are content-addressed, so a
//! part that several images share is stored once per repository.
//!
//! A node that takes the published index and then needs the layers' own trees (layer views: the containerd
//! snapshotter, `clip mount --layers`) reads the parts from there ([`PublishedParts`], a read-only
//! [`PartStore`] asked after the local part directory) instead of downloading the layers to index them.

use std::collections::{BTreeMap, BTreeSet};

use clip_format::{index_part_keys, ImageMeta, LayerPart};
use clip_indexer::{PartStore, PartStoreError};
use clip_source::{Descriptor, Digest, SourceOptions};
use futures::future::BoxFuture;
use tracing::{debug, warn};

use crate::parts::MAX_PART_BYTES;
use crate::publish::{find_artifact, ExtraLayer, FoundArtifact, INDEX_ARTIFACT_TYPE};
use crate::ImageError;

/// Media type of an artifact layer holding a layer part (the part file's bytes).
pub const PART_LAYER_MEDIA_TYPE: &str = "application/vnd.clip.part.v1";

/// The parts of the layers of the index `meta` that `parts` holds, encoded as artifact layers; a layer
/// whose part is missing is left out (logged: a node then indexes that layer itself).
pub(crate) async fn part_layers(meta: &ImageMeta, parts: &dyn PartStore) -> Vec<ExtraLayer> {
    let mut seen = BTreeSet::new();
    let mut layers = Vec::new();
    for key in index_part_keys(meta) {
        if !seen.insert(key.clone()) {
            continue;
        }
        let part = match parts.get(&key).await {
            Ok(Some(part)) => part,
            Ok(None) => {
                warn!(%key, store = %parts.describe(), "layer part not kept here: the index is published without it");
                continue;
            }
            Err(error) => {
                warn!(%key, error = &error as &dyn std::error::Error, "layer part unreadable: the index is published without it");
                continue;
            }
        };
        let mut bytes = Vec::new();
        match part.write(&mut bytes) {
            Ok(_) => layers.push(ExtraLayer { media_type: PART_LAYER_MEDIA_TYPE, title: format!("{key}.part"), bytes }),
            Err(error) => warn!(%key, error = &error as &dyn std::error::Error, "encoding a layer part"),
        }
    }
    layers
}

/// The layer parts published with an image's index (read-only: parts are published with an index).
pub struct PublishedParts {
    image: String,
    artifact: FoundArtifact,
    /// Part key → its blob.
    blobs: BTreeMap<String, Descriptor>,
}

impl PublishedParts {
    /// The parts published with the index of the image manifest `manifest_digest` in `image`'s repository;
    /// `Ok(None)` when no index is published there or it carries no parts.
    pub async fn find(
        image: &str,
        manifest_digest: &Digest,
        opts: &SourceOptions,
    ) -> Result<Option<PublishedParts>, ImageError> {
        let Some(artifact) = find_artifact(image, manifest_digest, opts, INDEX_ARTIFACT_TYPE).await? else {
            return Ok(None);
        };
        let mut blobs = BTreeMap::new();
        for n in 1..artifact.layer_count() {
            let (desc, title) = artifact.layer(image, n, MAX_PART_BYTES)?;
            let key = title.as_deref().and_then(|t| t.strip_suffix(".part"));
            if let (PART_LAYER_MEDIA_TYPE, Some(key)) = (desc.media_type.as_str(), key) {
                blobs.insert(key.to_owned(), desc);
            }
        }
        if blobs.is_empty() {
            debug!(%image, artifact = %artifact.digest, "the published index carries no layer parts");
            return Ok(None);
        }
        Ok(Some(PublishedParts { image: image.to_owned(), artifact, blobs }))
    }

    /// How many parts were published.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether none were (never true of a found [`PublishedParts`]).
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    async fn read(&self, key: &str, desc: &Descriptor) -> Result<LayerPart, PartStoreError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| PartStoreError {
            store: self.describe(),
            what: format!("reading part {key} ({})", desc.digest),
            source,
        };
        let repo = &self.artifact.repo;
        let bytes = repo
            .source
            .read_small_blob(desc, MAX_PART_BYTES)
            .await
            .map_err(|e| failed(Box::new(repo.err("downloading a layer part")(e))))?;
        if Digest::of(&bytes) != desc.digest {
            return Err(failed("the blob does not match its digest".into()));
        }
        let part = LayerPart::from_bytes(&bytes).map_err(|e| failed(Box::new(e)))?;
        if part.key() != key {
            return Err(failed(format!("it holds part {}", part.key()).into()));
        }
        Ok(part)
    }
}

impl PartStore for PublishedParts {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<LayerPart>, PartStoreError>> {
        Box::pin(async move {
            match self.blobs.get(key) {
                Some(desc) => self.read(key, desc).await.map(Some),
                None => Ok(None),
            }
        })
    }

    fn put<'a>(&'a self, _part: &'a LayerPart) -> BoxFuture<'a, Result<(), PartStoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        format!("parts published with {} (artifact {})", self.image, self.artifact.digest)
    }
}
