//! Index distribution through the registry: an index is published next to its image as an OCI artifact
//! ([`publish_index`]) and found there again by digest ([`fetch_published_index`]).
//!
//! The artifact is an OCI image manifest with `artifactType` [`INDEX_ARTIFACT_TYPE`], the empty config
//! (`application/vnd.oci.empty.v1+json`, `{}`), the `.clip` file as its first layer
//! ([`INDEX_LAYER_MEDIA_TYPE`]), the image's layer parts as further layers (see [`crate::publish_parts`]),
//! and `subject` = the image manifest. It is pushed by digest. Registries with the referrers API list it
//! under `GET /v2/<name>/referrers/<digest>`; for the others (such as distribution 2.8) the referrers tag
//! schema is kept up to date: an image index tagged `sha256-<hex of the subject>` listing the artifacts,
//! merged with what is already there.
//!
//! Registry credentials come from Docker's config, like every registry request clip makes
//! ([`clip_source::registry_auth`]: `DOCKER_CONFIG`, `~/.docker/config.json`, credential helpers); a
//! registry that refuses them (or wants some) fails with [`ImageError::RegistryAuth`], which says how to
//! log in.

use std::path::{Path, PathBuf};

use clip_format::Archive;
use clip_indexer::PartStore;
use clip_source::{media_types, Access, Descriptor, Digest, ImageRef, RegistrySource, SourceError, SourceOptions};
use serde_json::{json, Value};
use tracing::{debug, info};

use crate::ImageError;

/// `artifactType` of a published index.
pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.clip.index.v2";
/// Media type of the layer holding the `.clip` file.
pub const INDEX_LAYER_MEDIA_TYPE: &str = "application/vnd.clip.index.v2.clip";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const OCI_MANIFEST: &str = media_types::OCI_MANIFEST;
const OCI_INDEX: &str = media_types::OCI_INDEX;
/// Largest index clip downloads from a registry.
const MAX_INDEX_BYTES: u64 = 4 << 30;

/// What [`publish_index`] pushed.
#[derive(Debug, Clone)]
pub struct PublishedIndex {
    /// Digest of the artifact manifest.
    pub artifact: Digest,
    /// Digest of the image manifest it refers to.
    pub subject: Digest,
    /// The referrers tag written (`sha256-<hex>`), when the registry lacks the referrers API.
    pub referrers_tag: Option<String>,
}

/// A registry repository, with the image reference the user gave for it (for errors).
pub(crate) struct Repo {
    pub source: RegistrySource,
    registry: String,
    image: String,
}

impl Repo {
    async fn new(image: &str, opts: &SourceOptions, access: Access) -> Result<Repo, ImageError> {
        let reference: ImageRef = image.parse()?;
        let ImageRef::Registry { registry, repository, .. } = reference else {
            return Err(ImageError::NotARegistry { image: image.to_owned() });
        };
        let source = RegistrySource::connect_for(&registry, &repository, opts, access)
            .await
            .map_err(|e| registry_failure(image, &registry, "connecting", e))?;
        Ok(Repo { source, registry, image: image.to_owned() })
    }

    pub fn err(&self, what: &'static str) -> impl FnOnce(SourceError) -> ImageError + '_ {
        move |e| registry_failure(&self.image, &self.registry, what, e)
    }

    /// The artifact manifest `digest` of `artifact_type` referring to `subject`: `Ok(None)` when it is of
    /// another type; an error when it does not match its digest or names another subject.
    async fn artifact_manifest(
        &self,
        digest: &Digest,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<Option<Value>, ImageError> {
        let bad = |why: String| ImageError::BadArtifact { image: self.image.clone(), digest: digest.to_string(), why };
        let bytes = self.source.manifest(&digest.to_string(), &[OCI_MANIFEST]).await.map_err(|e| match e {
            SourceError::DigestMismatch { .. } => bad("its manifest does not match its digest".into()),
            e => registry_failure(&self.image, &self.registry, "fetching an artifact", e),
        })?;
        let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if manifest.get("artifactType").and_then(Value::as_str) != Some(artifact_type) {
            return Ok(None);
        }
        let named = manifest.pointer("/subject/digest").and_then(Value::as_str);
        if named.and_then(|n| n.parse::<Digest>().ok()) != Some(*subject) {
            return Err(bad(format!("its subject is {named:?}, not {subject}")));
        }
        Ok(Some(manifest))
    }
}

/// A failed registry call: [`ImageError::RegistryAuth`] (with the fix) when the registry refused our
/// credentials or wants some, else the source's error.
pub fn registry_failure(image: &str, registry: &str, what: &'static str, e: SourceError) -> ImageError {
    match e {
        SourceError::Auth { detail, .. } => {
            ImageError::RegistryAuth { image: image.to_owned(), registry: registry.to_owned(), what, detail }
        }
        e => ImageError::from(e),
    }
}

fn registry_error(image: &str, what: &'static str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Registry { image: image.to_owned(), what, detail: e.to_string() }
}

/// Publishes the index at `index` (built from `image`) as an artifact referring to the image manifest, with
/// the layer parts of its layers that `parts` holds as further layers of that artifact (see
/// [`crate::publish_parts`]), and makes it discoverable (referrers API, else the referrers tag schema).
/// `image` must resolve to the manifest the index was built from.
pub async fn publish_index(
    image: &str,
    index: &Path,
    parts: &dyn PartStore,
    opts: &SourceOptions,
) -> Result<PublishedIndex, ImageError> {
    let archive = Archive::open(index).map_err(|source| ImageError::Format { path: index.into(), source })?;
    let Some(indexed) = archive.meta().manifest_digest else {
        return Err(ImageError::NotAnImageIndex { path: index.into() });
    };
    let mut opts = opts.clone();
    if let Some(p) = &archive.meta().platform {
        opts.platform = clip_source::Platform::new(&p.os, &p.architecture, p.variant.as_deref());
    }
    let bytes = std::fs::read(index).map_err(ImageError::io(index, "reading the index"))?;
    let title = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "index.clip".into());
    let extra = crate::publish_parts::part_layers(archive.meta(), parts).await;
    let artifact = Artifact { artifact_type: INDEX_ARTIFACT_TYPE, layer_media_type: INDEX_LAYER_MEDIA_TYPE, title };
    push_artifact_layers(image, &indexed, &opts, &artifact, bytes, extra).await
}

/// A further layer of an artifact: its media type, title (`org.opencontainers.image.title`) and bytes.
pub(crate) struct ExtraLayer {
    pub media_type: &'static str,
    pub title: String,
    pub bytes: Vec<u8>,
}

/// What [`push_artifact`] pushes besides the bytes.
pub struct Artifact {
    pub artifact_type: &'static str,
    pub layer_media_type: &'static str,
    pub title: String,
}

/// Pushes `bytes` as a one-layer artifact whose `subject` is the manifest `subject_digest` of `image`'s
/// repository, and makes it discoverable (referrers API, else the referrers tag schema).
pub async fn push_artifact(
    image: &str,
    subject_digest: &Digest,
    opts: &SourceOptions,
    artifact: &Artifact,
    bytes: Vec<u8>,
) -> Result<PublishedIndex, ImageError> {
    push_artifact_layers(image, subject_digest, opts, artifact, bytes, Vec::new()).await
}

/// [`push_artifact`] with `extra` layers after the first (each blob pushed unless the registry has it).
async fn push_artifact_layers(
    image: &str,
    subject_digest: &Digest,
    opts: &SourceOptions,
    artifact: &Artifact,
    bytes: Vec<u8>,
    extra: Vec<ExtraLayer>,
) -> Result<PublishedIndex, ImageError> {
    let indexed = *subject_digest;
    let mut reference: ImageRef = image.parse()?;
    if let ImageRef::Registry { digest, .. } = &mut reference {
        *digest = Some(indexed);
    }
    let (resolved, _) = clip_source::open(&reference, opts).await?;
    let subject_type = serde_json::from_slice::<Value>(&resolved.manifest_bytes)
        .ok()
        .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned());
    let subject = json!({
        "mediaType": subject_type,
        "digest": indexed.to_string(),
        "size": resolved.manifest_bytes.len(),
    });

    let repo = Repo::new(image, opts, Access::Push).await?;
    let empty_digest = Digest::of(b"{}");
    repo.source.push_blob(&empty_digest, b"{}".to_vec().into()).await.map_err(repo.err("pushing a blob"))?;
    let first = ExtraLayer { media_type: artifact.layer_media_type, title: artifact.title.clone(), bytes };
    let mut layers = Vec::new();
    for layer in std::iter::once(first).chain(extra) {
        let digest = Digest::of(&layer.bytes);
        let size = layer.bytes.len();
        repo.source.push_blob(&digest, layer.bytes.into()).await.map_err(repo.err("pushing a blob"))?;
        layers.push(json!({
            "mediaType": layer.media_type,
            "digest": digest.to_string(),
            "size": size,
            "annotations": { "org.opencontainers.image.title": layer.title },
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": empty_digest.to_string(), "size": 2, "data": "e30=" },
        "layers": layers,
        "subject": subject,
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| registry_error(image, "encoding the manifest", e))?;
    let digest = Digest::of(&body);
    repo.source
        .push_manifest(&digest.to_string(), OCI_MANIFEST, body.clone().into())
        .await
        .map_err(repo.err("pushing the artifact"))?;
    info!(%image, artifact = %digest, artifact_type = artifact.artifact_type, subject = %indexed, "artifact pushed");

    let listed = repo
        .source
        .referrers(&indexed, artifact.artifact_type)
        .await
        .map_err(repo.err("listing referrers"))?
        .iter()
        .any(|m| m.digest == digest.to_string());
    let referrers_tag = if listed {
        None
    } else {
        let entry = json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": body.len(),
            "artifactType": artifact.artifact_type,
        });
        Some(update_tag_schema(&repo, &indexed, entry).await?)
    };
    Ok(PublishedIndex { artifact: digest, subject: indexed, referrers_tag })
}

/// Adds `entry` to the referrers index tagged `sha256-<hex>` (creating it when missing).
async fn update_tag_schema(repo: &Repo, subject: &Digest, entry: Value) -> Result<String, ImageError> {
    let tag = clip_source::referrers_tag(subject);
    let mut index = match repo.source.manifest(&tag, &[OCI_INDEX]).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|v| v.get("manifests").is_some_and(Value::is_array))
            .ok_or_else(|| {
                registry_error(&repo.image, "reading the referrers tag", format!("{tag} is not an image index"))
            })?,
        Err(SourceError::TagNotFound { .. }) => {
            debug!(%tag, "no referrers tag yet");
            json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
        }
        Err(e) => return Err(repo.err("reading the referrers tag")(e)),
    };
    if let Some(list) = index.get_mut("manifests").and_then(Value::as_array_mut) {
        if !list.iter().any(|m| m.get("digest") == entry.get("digest")) {
            list.push(entry);
        }
    }
    let body =
        serde_json::to_vec(&index).map_err(|e| registry_error(&repo.image, "encoding the referrers index", e))?;
    repo.source.push_manifest(&tag, OCI_INDEX, body.into()).await.map_err(repo.err("pushing the referrers tag"))?;
    info!(image = %repo.image, %tag, "referrers tag updated (the registry has no referrers API)");
    Ok(tag)
}

/// Looks for an index of the image manifest `manifest_digest` published in `image`'s repository; when one
/// is found (its artifact names that subject, its layer matches its digest and is a readable index of that
/// manifest), writes it to `dest` atomically and returns the artifact digest. `Ok(None)`: none published.
pub async fn fetch_published_index(
    image: &str,
    manifest_digest: &Digest,
    dest: &Path,
    opts: &SourceOptions,
) -> Result<Option<Digest>, ImageError> {
    let Some((artifact, layer)) =
        find_artifact_layer(image, manifest_digest, opts, INDEX_ARTIFACT_TYPE, MAX_INDEX_BYTES).await?
    else {
        return Ok(None);
    };
    let bad =
        |why: String| ImageError::BadArtifact { image: image.to_owned(), digest: artifact.digest.to_string(), why };
    if layer.media_type != INDEX_LAYER_MEDIA_TYPE {
        return Err(bad(format!("no {INDEX_LAYER_MEDIA_TYPE} layer")));
    }
    download(&artifact, &layer, dest, manifest_digest).await.map_err(|e| match e {
        ImageError::Registry { .. } | ImageError::Io { .. } | ImageError::Source(_) => e,
        other => bad(other.to_string()),
    })?;
    info!(%image, artifact = %artifact.digest, index = %dest.display(), "index from registry");
    Ok(Some(artifact.digest))
}

/// An artifact found by [`find_artifact`]: its manifest digest and manifest, and the repository to read it
/// from.
pub(crate) struct FoundArtifact {
    pub digest: Digest,
    pub manifest: Value,
    pub repo: Repo,
}

impl FoundArtifact {
    /// Its layer `n`, checked to be a plausible blob of at most `max` bytes, with its title annotation.
    pub fn layer(&self, image: &str, n: usize, max: u64) -> Result<(Descriptor, Option<String>), ImageError> {
        let bad =
            |why: String| ImageError::BadArtifact { image: image.to_owned(), digest: self.digest.to_string(), why };
        let layer =
            self.manifest.pointer(&format!("/layers/{n}")).ok_or_else(|| bad(format!("it has no layer {n}")))?;
        let digest = layer.get("digest").and_then(Value::as_str).unwrap_or_default();
        let size = layer.get("size").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let media_type = layer.get("mediaType").and_then(Value::as_str).unwrap_or_default();
        let title = layer.pointer("/annotations/org.opencontainers.image.title").and_then(Value::as_str);
        let digest = digest
            .parse::<Digest>()
            .ok()
            .filter(|_| size <= max)
            .ok_or_else(|| bad(format!("layer {digest:?} of {size} bytes is implausible")))?;
        Ok((Descriptor::new(media_type, digest, size), title.map(str::to_owned)))
    }

    /// How many layers it has.
    pub fn layer_count(&self) -> usize {
        self.manifest.get("layers").and_then(Value::as_array).map_or(0, Vec::len)
    }
}

/// The first artifact of `artifact_type` that refers to `subject_digest` in `image`'s repository.
/// `Ok(None)`: none published.
pub(crate) async fn find_artifact(
    image: &str,
    subject: &Digest,
    opts: &SourceOptions,
    artifact_type: &str,
) -> Result<Option<FoundArtifact>, ImageError> {
    let repo = Repo::new(image, opts, Access::Pull).await?;
    let entries = repo.source.referrers(subject, artifact_type).await.map_err(repo.err("listing referrers"))?;
    for entry in entries {
        let digest = entry.digest.parse::<Digest>().map_err(|_| ImageError::BadArtifact {
            image: image.to_owned(),
            digest: entry.digest.clone(),
            why: "its digest is not a sha256 digest".into(),
        })?;
        if let Some(manifest) = repo.artifact_manifest(&digest, subject, artifact_type).await? {
            return Ok(Some(FoundArtifact { digest, manifest, repo }));
        }
    }
    Ok(None)
}

/// The first layer of the first artifact of `artifact_type` that refers to `subject_digest` in `image`'s
/// repository, checked to be a plausible blob of at most `max` bytes. `Ok(None)`: none published.
async fn find_artifact_layer(
    image: &str,
    subject_digest: &Digest,
    opts: &SourceOptions,
    artifact_type: &str,
    max: u64,
) -> Result<Option<(FoundArtifact, Descriptor)>, ImageError> {
    let Some(artifact) = find_artifact(image, subject_digest, opts, artifact_type).await? else {
        return Ok(None);
    };
    let (desc, _) = artifact.layer(image, 0, max)?;
    Ok(Some((artifact, desc)))
}

/// The layer of the first artifact of `artifact_type` referring to `subject_digest` in `image`'s repository,
/// read into memory (at most `max` bytes) and checked against its digest: `(artifact digest, bytes)`.
/// `Ok(None)`: none published.
pub async fn fetch_artifact_layer(
    image: &str,
    subject_digest: &Digest,
    opts: &SourceOptions,
    artifact_type: &str,
    max: u64,
) -> Result<Option<(Digest, Vec<u8>)>, ImageError> {
    let Some((artifact, layer)) = find_artifact_layer(image, subject_digest, opts, artifact_type, max).await? else {
        return Ok(None);
    };
    let repo = &artifact.repo;
    let out = repo.source.read_small_blob(&layer, max).await.map_err(repo.err("downloading an artifact"))?;
    if Digest::of(&out) != layer.digest {
        return Err(ImageError::BadArtifact {
            image: image.to_owned(),
            digest: artifact.digest.to_string(),
            why: format!("its layer does not match {}", layer.digest),
        });
    }
    Ok(Some((artifact.digest, out)))
}

/// Downloads the index blob `layer` into a temporary file next to `dest` (streaming, digest checked),
/// checks it is an index of `manifest_digest`, then puts it in place as [`crate::write_atomically`] does.
async fn download(
    artifact: &FoundArtifact,
    layer: &Descriptor,
    dest: &Path,
    manifest_digest: &Digest,
) -> Result<(), ImageError> {
    let repo = &artifact.repo;
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir, "creating the index store"))?;
    let tmp = crate::atomic::temp_next_to(dest)?;
    let path = tmp.path().to_path_buf();
    clip_source::download_verified(&repo.source, layer, &path).await.map_err(repo.err("downloading the index"))?;
    let archive = Archive::open(&path).map_err(|source| ImageError::Format { path: path.clone(), source })?;
    crate::check_indexed(&archive, manifest_digest, path)?;
    crate::atomic::put_in_place(tmp, dest)
}
