//! Writing to a repository and finding artifacts in it, for publishing indexes and profiles next to
//! their image: blob uploads (monolithic `POST` + `PUT`), manifest pushes, and the artifacts that refer
//! to a manifest (the referrers API, else the referrers tag schema `sha256-<hex>`). Pushing needs a
//! source connected with [`super::Access::Push`].

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde::Deserialize;

use super::request::Target;
use super::RegistrySource;
use crate::digest::{media_types, Digest};
use crate::error::SourceError;
use crate::resolve::MAX_MANIFEST_BYTES;

/// One artifact that refers to a manifest, as a referrers list names it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ReferrerEntry {
    /// Media type of the artifact manifest.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest of the artifact manifest.
    pub digest: String,
    /// Size of the artifact manifest.
    #[serde(default)]
    pub size: u64,
    /// The artifact type, when the list says it.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
}

#[derive(Deserialize)]
struct ReferrersList {
    #[serde(default)]
    manifests: Vec<ReferrerEntry>,
}

impl RegistrySource {
    /// Whether the repository holds the blob `digest`.
    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool, SourceError> {
        let r = &self.0;
        let url = r.url(&format!("blobs/{digest}"));
        let answer = r.call(&Target::Blob(digest), &[StatusCode::NOT_FOUND], 0, |a| a.apply(r.http.head(&url))).await?;
        Ok(answer.status.is_success())
    }

    /// Uploads `data` as the blob `digest` (one `POST` for an upload URL, one `PUT` of the bytes),
    /// unless the repository has it already.
    pub async fn push_blob(&self, digest: &Digest, data: Bytes) -> Result<(), SourceError> {
        if self.blob_exists(digest).await? {
            return Ok(());
        }
        let r = &self.0;
        let target = Target::Other(format!("pushing blob {digest}"));
        let url = r.url("blobs/uploads/");
        let started = r.call(&target, &[], 0, |a| a.apply(r.http.post(&url))).await?;
        let location = started
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| r.registry_error(&target, "the upload answer has no Location".into()))?;
        let upload = if location.starts_with('/') {
            format!("{}://{}{location}", r.scheme, r.host)
        } else {
            location.to_owned()
        };
        let separator = if upload.contains('?') { '&' } else { '?' };
        let put = format!("{upload}{separator}digest={digest}");
        r.call(&target, &[], 0, |a| {
            a.apply(r.http.put(&put).header(CONTENT_TYPE, "application/octet-stream").body(data.clone()))
        })
        .await?;
        Ok(())
    }

    /// Pushes `body` as the manifest `reference` (a tag, or its digest) of media type `media_type`.
    pub async fn push_manifest(&self, reference: &str, media_type: &str, body: Bytes) -> Result<(), SourceError> {
        let r = &self.0;
        let target = Target::Other(format!("pushing manifest {reference}"));
        let url = r.url(&format!("manifests/{reference}"));
        r.call(&target, &[], 0, |a| a.apply(r.http.put(&url).header(CONTENT_TYPE, media_type).body(body.clone())))
            .await?;
        Ok(())
    }

    /// The artifacts of `artifact_type` (and those whose type the list does not say) that refer to the
    /// manifest `subject`: from the referrers API, or the referrers tag `sha256-<hex>` of registries
    /// without it. Lists are read under the manifest size cap.
    pub async fn referrers(&self, subject: &Digest, artifact_type: &str) -> Result<Vec<ReferrerEntry>, SourceError> {
        let r = &self.0;
        let target = Target::Other(format!("listing referrers of {subject}"));
        let url = r.url(&format!("referrers/{subject}"));
        let answer = r
            .call(&target, &[StatusCode::NOT_FOUND], MAX_MANIFEST_BYTES, |a| {
                a.apply(r.http.get(&url).query(&[("artifactType", artifact_type)]))
            })
            .await?;
        let body = if answer.status.is_success() {
            answer.body
        } else {
            match self.manifest(&referrers_tag(subject), &[media_types::OCI_INDEX]).await {
                Ok(body) => body,
                Err(SourceError::TagNotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        };
        let list: ReferrersList = serde_json::from_slice(&body)
            .map_err(|e| r.registry_error(&target, format!("the referrers list is not an image index: {e}")))?;
        Ok(list
            .manifests
            .into_iter()
            .filter(|m| m.artifact_type.as_deref().is_none_or(|t| t == artifact_type))
            .collect())
    }
}

/// The tag of the referrers tag schema for `subject`: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    subject.dashed()
}
