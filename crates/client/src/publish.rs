//! Index distribution through the registry: an index is published next to its image as an OCI artifact
//! ([`publish_index`]) and found there again by digest ([`fetch_published_index`]).
//!
//! The artifact is an OCI image manifest with `artifactType` [`INDEX_ARTIFACT_TYPE`], the empty config
//! (`application/vnd.oci.empty.v1+json`, `{}`), one layer (the `.clip` file, [`INDEX_LAYER_MEDIA_TYPE`])
//! and `subject` = the image manifest. It is pushed by digest. Registries with the referrers API list it
//! under `GET /v2/<name>/referrers/<digest>`; for the others (such as distribution 2.8) the referrers tag
//! schema is kept up to date: an image index tagged `sha256-<hex of the subject>` listing the artifacts,
//! merged with what is already there.
//!
//! Registry credentials come from Docker's config, like every registry request clip makes
//! ([`clip_source::registry_auth`]: `DOCKER_CONFIG`, `~/.docker/config.json`, credential helpers); a
//! registry that refuses them (or wants some) fails with [`ClientError::RegistryAuth`], which says how to
//! log in.

use std::path::{Path, PathBuf};

use clip_format::Archive;
use clip_source::{Digest, ImageRef, SourceOptions};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{json, Value};
use tracing::{debug, info};

use crate::ClientError;

/// `artifactType` of a published index.
pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.clip.index.v2";
/// Media type of the layer holding the `.clip` file.
pub const INDEX_LAYER_MEDIA_TYPE: &str = "application/vnd.clip.index.v2.clip";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Largest index clip downloads from a registry.
const MAX_INDEX_BYTES: u64 = 4 << 30;
/// Largest artifact manifest or referrers index read.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// What [`publish_index`] pushed.
#[derive(Debug, Clone)]
pub struct PublishedIndex {
    /// Digest of the artifact manifest.
    pub artifact: String,
    /// Digest of the image manifest it refers to.
    pub subject: String,
    /// The referrers tag written (`sha256-<hex>`), when the registry lacks the referrers API.
    pub referrers_tag: Option<String>,
}

/// A registry repository as oci-client sees it.
struct Repo {
    client: Client,
    auth: RegistryAuth,
    registry: String,
    repository: String,
    image: String,
}

impl Repo {
    async fn new(image: &str, opts: &SourceOptions) -> Result<Repo, ClientError> {
        let reference: ImageRef = image.parse()?;
        let ImageRef::Registry { registry, repository, .. } = reference else {
            return Err(ClientError::NotARegistry { image: image.to_owned() });
        };
        let (client, auth) = registry_client(image, &registry, opts).await?;
        Ok(Repo { client, auth, registry, repository, image: image.to_owned() })
    }

    fn by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_owned())
    }

    fn by_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.to_owned())
    }

    fn err(&self, what: &'static str) -> impl FnOnce(OciDistributionError) -> ClientError + '_ {
        move |e| registry_failure(&self.image, &self.registry, what, e)
    }

    /// Artifact manifests of `artifact_type` that refer to `subject` (referrers API, else tag schema).
    async fn referrers(
        &self,
        subject: &str,
        artifact_type: &str,
    ) -> Result<Vec<oci_client::manifest::ImageIndexEntry>, ClientError> {
        self.client.store_auth_if_needed(self.by_digest(subject).resolve_registry(), &self.auth).await;
        let index = self
            .client
            .pull_referrers(&self.by_digest(subject), Some(artifact_type))
            .await
            .map_err(self.err("listing referrers"))?;
        Ok(index
            .manifests
            .into_iter()
            .filter(|m| m.artifact_type.as_deref() == Some(artifact_type) || m.artifact_type.is_none())
            .collect())
    }
}

/// An oci-client for `registry` (plain HTTP for local registries or with `plain_http`) and the credentials
/// to use with it, from Docker's config ([`clip_source::registry_auth`]).
pub(crate) async fn registry_client(
    image: &str,
    registry: &str,
    opts: &SourceOptions,
) -> Result<(Client, RegistryAuth), ClientError> {
    let auth = clip_source::registry_auth(registry, opts).await?;
    let plain = opts.plain_http || clip_source::is_local_registry(registry);
    let base = Reference::with_tag(registry.to_owned(), "library/x".into(), "latest".into());
    let protocol = if plain {
        ClientProtocol::HttpsExcept(vec![base.resolve_registry().to_owned()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::try_from(ClientConfig { protocol, ..ClientConfig::default() })
        .map_err(|e| registry_error(image, "client setup", e))?;
    debug!(registry, anonymous = matches!(auth, RegistryAuth::Anonymous), "registry client");
    Ok((client, auth))
}

/// A failed registry call: [`ClientError::RegistryAuth`] (with the fix) when the registry refused our
/// credentials or wants some, else [`ClientError::Registry`].
pub(crate) fn registry_failure(
    image: &str,
    registry: &str,
    what: &'static str,
    e: OciDistributionError,
) -> ClientError {
    use OciDistributionError as E;
    let denied = match &e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => true,
        E::ServerError { code, .. } => matches!(code, 401 | 403),
        E::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|c| matches!(c.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
        }
        _ => false,
    };
    if denied {
        ClientError::RegistryAuth {
            image: image.to_owned(),
            registry: registry.to_owned(),
            what,
            detail: e.to_string(),
        }
    } else {
        registry_error(image, what, e)
    }
}

fn registry_error(image: &str, what: &'static str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Registry { image: image.to_owned(), what, detail: e.to_string() }
}

/// Publishes the index at `index` (built from `image`) as an artifact referring to the image manifest, and
/// makes it discoverable (referrers API, else the referrers tag schema). `image` must resolve to the
/// manifest the index was built from.
pub async fn publish_index(image: &str, index: &Path, opts: &SourceOptions) -> Result<PublishedIndex, ClientError> {
    let archive = Archive::open(index).map_err(|source| ClientError::Format { path: index.into(), source })?;
    let Some(indexed) = archive.meta().manifest_digest.clone() else {
        return Err(ClientError::NotAnImageIndex { path: index.into() });
    };
    let mut opts = opts.clone();
    if let Some(p) = &archive.meta().platform {
        opts.platform = clip_source::Platform::new(&p.os, &p.architecture, p.variant.as_deref());
    }
    let bytes = std::fs::read(index).map_err(ClientError::io(index, "reading the index"))?;
    let title = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "index.clip".into());
    let artifact = Artifact { artifact_type: INDEX_ARTIFACT_TYPE, layer_media_type: INDEX_LAYER_MEDIA_TYPE, title };
    push_artifact(image, &indexed, &opts, &artifact, bytes).await
}

/// What [`push_artifact`] pushes besides the bytes.
pub(crate) struct Artifact {
    pub artifact_type: &'static str,
    pub layer_media_type: &'static str,
    pub title: String,
}

/// Pushes `bytes` as a one-layer artifact whose `subject` is the manifest `subject_digest` of `image`'s
/// repository, and makes it discoverable (referrers API, else the referrers tag schema).
pub(crate) async fn push_artifact(
    image: &str,
    subject_digest: &str,
    opts: &SourceOptions,
    artifact: &Artifact,
    bytes: Vec<u8>,
) -> Result<PublishedIndex, ClientError> {
    let indexed = subject_digest.to_owned();
    let mut reference: ImageRef = image.parse()?;
    if let ImageRef::Registry { digest, .. } = &mut reference {
        *digest = Some(indexed.clone());
    }
    let (resolved, _) = clip_source::open(&reference, opts).await?;
    let subject_type = serde_json::from_slice::<Value>(&resolved.manifest_bytes)
        .ok()
        .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned());
    let subject = json!({
        "mediaType": subject_type,
        "digest": indexed,
        "size": resolved.manifest_bytes.len(),
    });

    let repo = Repo::new(image, opts).await?;
    let base = repo.by_digest(&indexed);
    repo.client.auth(&base, &repo.auth, RegistryOperation::Push).await.map_err(repo.err("authenticating to push"))?;

    let layer_digest = Digest::of(&bytes).to_string();
    let empty_digest = Digest::of(b"{}").to_string();
    let len = bytes.len();
    for (data, digest) in [(b"{}".to_vec(), &empty_digest), (bytes, &layer_digest)] {
        let exists = repo.client.blob_exists(&base, digest).await.unwrap_or(false);
        if !exists {
            repo.client.push_blob(&base, data, digest).await.map_err(repo.err("pushing a blob"))?;
        }
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": empty_digest, "size": 2, "data": "e30=" },
        "layers": [{
            "mediaType": artifact.layer_media_type,
            "digest": layer_digest,
            "size": len,
            "annotations": { "org.opencontainers.image.title": artifact.title },
        }],
        "subject": subject,
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| registry_error(image, "encoding the manifest", e))?;
    let digest = Digest::of(&body).to_string();
    let content_type = OCI_MANIFEST.parse().map_err(|e| registry_error(image, "content type", e))?;
    repo.client
        .push_manifest_raw(&repo.by_digest(&digest), body.clone(), content_type)
        .await
        .map_err(repo.err("pushing the artifact"))?;
    info!(%image, artifact = %digest, artifact_type = artifact.artifact_type, subject = %indexed, "artifact pushed");

    let listed = repo.referrers(&indexed, artifact.artifact_type).await?.iter().any(|m| m.digest == digest);
    let referrers_tag = if listed {
        None
    } else {
        let entry = json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": body.len(),
            "artifactType": artifact.artifact_type,
        });
        Some(update_tag_schema(&repo, &indexed, entry).await?)
    };
    Ok(PublishedIndex { artifact: digest, subject: indexed, referrers_tag })
}

/// Adds `entry` to the referrers index tagged `sha256-<hex>` (creating it when missing).
async fn update_tag_schema(repo: &Repo, subject: &str, entry: Value) -> Result<String, ClientError> {
    let tag = subject.replace(':', "-");
    let tagged = repo.by_tag(&tag);
    let mut index = match repo.client.pull_manifest_raw(&tagged, &repo.auth, &[OCI_INDEX]).await {
        Ok((bytes, _)) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|v| v.get("manifests").is_some_and(Value::is_array))
            .ok_or_else(|| {
                registry_error(&repo.image, "reading the referrers tag", format!("{tag} is not an image index"))
            })?,
        Err(e) => {
            debug!(%tag, error = %e, "no referrers tag yet");
            json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
        }
    };
    if let Some(list) = index.get_mut("manifests").and_then(Value::as_array_mut) {
        if !list.iter().any(|m| m.get("digest") == entry.get("digest")) {
            list.push(entry);
        }
    }
    let body =
        serde_json::to_vec(&index).map_err(|e| registry_error(&repo.image, "encoding the referrers index", e))?;
    let content_type = OCI_INDEX.parse().map_err(|e| registry_error(&repo.image, "content type", e))?;
    repo.client.push_manifest_raw(&tagged, body, content_type).await.map_err(repo.err("pushing the referrers tag"))?;
    info!(image = %repo.image, %tag, "referrers tag updated (the registry has no referrers API)");
    Ok(tag)
}

/// Looks for an index of the image manifest `manifest_digest` published in `image`'s repository; when one
/// is found (its artifact names that subject, its layer matches its digest and is a readable index of that
/// manifest), writes it to `dest` atomically and returns the artifact digest. `Ok(None)`: none published.
pub async fn fetch_published_index(
    image: &str,
    manifest_digest: &str,
    dest: &Path,
    opts: &SourceOptions,
) -> Result<Option<String>, ClientError> {
    let repo = Repo::new(image, opts).await?;
    for entry in repo.referrers(manifest_digest, INDEX_ARTIFACT_TYPE).await? {
        let bad = |why: String| ClientError::BadArtifact { image: image.to_owned(), digest: entry.digest.clone(), why };
        let (bytes, _) = repo
            .client
            .pull_manifest_raw(&repo.by_digest(&entry.digest), &repo.auth, &[OCI_MANIFEST])
            .await
            .map_err(repo.err("fetching the index artifact"))?;
        if bytes.len() > MAX_MANIFEST_BYTES || Digest::of(&bytes).as_str() != entry.digest {
            return Err(bad("its manifest does not match its digest".into()));
        }
        let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if manifest.get("artifactType").and_then(Value::as_str) != Some(INDEX_ARTIFACT_TYPE) {
            continue;
        }
        let subject = manifest.pointer("/subject/digest").and_then(Value::as_str);
        if subject != Some(manifest_digest) {
            return Err(bad(format!("its subject is {subject:?}, not {manifest_digest}")));
        }
        let layer = manifest
            .pointer("/layers/0")
            .filter(|l| l.get("mediaType").and_then(Value::as_str) == Some(INDEX_LAYER_MEDIA_TYPE))
            .ok_or_else(|| bad(format!("no {INDEX_LAYER_MEDIA_TYPE} layer")))?;
        let digest = layer.get("digest").and_then(Value::as_str).unwrap_or_default().to_owned();
        let size = layer.get("size").and_then(Value::as_u64).unwrap_or(u64::MAX);
        if size > MAX_INDEX_BYTES || digest.parse::<Digest>().is_err() {
            return Err(bad(format!("layer {digest:?} of {size} bytes is not a plausible index")));
        }
        download(&repo, &digest, size, dest, manifest_digest).await.map_err(|e| match e {
            ClientError::Registry { .. } | ClientError::Io { .. } => e,
            other => bad(other.to_string()),
        })?;
        info!(%image, artifact = %entry.digest, index = %dest.display(), "index from registry");
        return Ok(Some(entry.digest));
    }
    Ok(None)
}

/// The layer of the first artifact of `artifact_type` referring to `subject_digest` in `image`'s repository,
/// read into memory (at most `max` bytes) and checked against its digest: `(artifact digest, bytes)`.
/// `Ok(None)`: none published.
pub(crate) async fn fetch_artifact_layer(
    image: &str,
    subject_digest: &str,
    opts: &SourceOptions,
    artifact_type: &str,
    max: u64,
) -> Result<Option<(String, Vec<u8>)>, ClientError> {
    let repo = Repo::new(image, opts).await?;
    for entry in repo.referrers(subject_digest, artifact_type).await? {
        let bad = |why: String| ClientError::BadArtifact { image: image.to_owned(), digest: entry.digest.clone(), why };
        let (bytes, _) = repo
            .client
            .pull_manifest_raw(&repo.by_digest(&entry.digest), &repo.auth, &[OCI_MANIFEST])
            .await
            .map_err(repo.err("fetching an artifact"))?;
        if bytes.len() > MAX_MANIFEST_BYTES || Digest::of(&bytes).as_str() != entry.digest {
            return Err(bad("its manifest does not match its digest".into()));
        }
        let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if manifest.get("artifactType").and_then(Value::as_str) != Some(artifact_type) {
            continue;
        }
        let subject = manifest.pointer("/subject/digest").and_then(Value::as_str);
        if subject != Some(subject_digest) {
            return Err(bad(format!("its subject is {subject:?}, not {subject_digest}")));
        }
        let layer = manifest.pointer("/layers/0").ok_or_else(|| bad("it has no layer".into()))?;
        let digest = layer.get("digest").and_then(Value::as_str).unwrap_or_default().to_owned();
        let size = layer.get("size").and_then(Value::as_u64).unwrap_or(u64::MAX);
        if size > max || digest.parse::<Digest>().is_err() {
            return Err(bad(format!("layer {digest:?} of {size} bytes is implausible")));
        }
        let mut out = Vec::new();
        repo.client
            .pull_blob(&repo.by_digest(&digest), digest.as_str(), &mut out)
            .await
            .map_err(repo.err("downloading an artifact"))?;
        if out.len() as u64 != size || Digest::of(&out).as_str() != digest {
            return Err(bad(format!("its layer does not match {digest} ({size} bytes)")));
        }
        return Ok(Some((entry.digest, out)));
    }
    Ok(None)
}

/// Streams the blob `digest` (verified by oci-client and again here) into a temporary file next to `dest`,
/// checks it is an index of `manifest_digest`, then renames it into place.
async fn download(repo: &Repo, digest: &str, size: u64, dest: &Path, manifest_digest: &str) -> Result<(), ClientError> {
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(ClientError::io(&dir, "creating the index store"))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(ClientError::io(&dir, "creating a file"))?;
    let file = tokio::fs::File::from_std(tmp.reopen().map_err(ClientError::io(tmp.path(), "opening"))?);
    repo.client.pull_blob(&repo.by_digest(digest), digest, file).await.map_err(repo.err("downloading the index"))?;
    let path = tmp.path().to_path_buf();
    let bytes = std::fs::read(&path).map_err(ClientError::io(&path, "reading the downloaded index"))?;
    if bytes.len() as u64 != size || Digest::of(&bytes).as_str() != digest {
        return Err(ClientError::Registry {
            image: repo.image.clone(),
            what: "downloading the index",
            detail: format!("the blob does not match {digest} ({size} bytes)"),
        });
    }
    let archive = Archive::open(&path).map_err(|source| ClientError::Format { path: path.clone(), source })?;
    if archive.meta().manifest_digest.as_deref() != Some(manifest_digest) {
        return Err(ClientError::ManifestChanged {
            path,
            indexed: archive.meta().manifest_digest.clone().unwrap_or_default(),
            found: manifest_digest.to_owned(),
        });
    }
    tmp.as_file().sync_all().map_err(ClientError::io(&path, "syncing the index"))?;
    tmp.persist(dest).map_err(|e| ClientError::io(dest, "renaming the index into place")(e.error))?;
    Ok(())
}
