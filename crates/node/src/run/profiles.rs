//! A node's startup profiles: the one to replay on a cold start (`profiles/<key>.json` when this node has
//! it, else published next to the image in its registry, else in the S3 index store), and, when there is
//! none anywhere, a recording of this start (within the configured limits) published to both for every
//! other node (`[startup]` of the configuration).

use std::path::PathBuf;

use clip_source::ImageRef;
use tracing::{debug, info, warn};

use super::{Node, StoredIndex};
use crate::{MountSpec, Profile};

impl Node {
    /// `profiles/<key>.json` of the state directory: where this node keeps the profile of an index.
    fn profile_path(&self, index: &StoredIndex) -> PathBuf {
        self.state_dir().join("profiles").join(format!("{}.json", index.key))
    }

    /// The prefetch profile of the image: kept here, else published in its registry, else in the S3 index
    /// store (then kept here); `None` when there is none or it cannot be fetched (logged: a profile only
    /// speeds things up).
    pub(super) async fn published_profile(&self, image: &str, index: &StoredIndex) -> Option<PathBuf> {
        let path = self.profile_path(index);
        if path.is_file() {
            return Some(path);
        }
        let (from, artifact, profile) = match self.fetch_profile(image, index).await {
            Some(found) => found,
            None => {
                debug!(%image, "no prefetch profile published");
                return None;
            }
        };
        let saved = path.parent().map(std::fs::create_dir_all).transpose().ok().and_then(|_| profile.save(&path).ok());
        info!(%image, %artifact, spans = profile.spans.len(), "prefetch profile from {from}");
        saved.map(|_| path)
    }

    /// The profile published in the registry, else in the S3 index store: `("registry" or "S3", its
    /// artifact or object, the profile)`.
    async fn fetch_profile(&self, image: &str, index: &StoredIndex) -> Option<(&'static str, String, Profile)> {
        if matches!(image.parse::<ImageRef>(), Ok(ImageRef::Registry { .. })) {
            let opts = self.source_options(image);
            match crate::fetch_published_profile(image, &index.manifest_digest, &opts).await {
                Ok(Some((artifact, profile))) => return Some(("registry", artifact.to_string(), profile)),
                Ok(None) => {}
                Err(error) => {
                    warn!(%image, error = &error as &dyn std::error::Error, "fetching the prefetch profile failed; looking further")
                }
            }
        }
        let store = self.config.s3_index_store.value.as_ref()?;
        let url = super::store::s3_profile_key(store, &index.manifest_digest);
        match crate::fetch_profile_s3(&url, &clip_s3::S3Options::default(), &index.manifest_digest).await {
            Ok(found) => found.map(|p| ("S3", url.to_string(), p)),
            Err(error) => {
                warn!(%image, profile = %url, error = &error as &dyn std::error::Error, "fetching the prefetch profile from S3 failed");
                None
            }
        }
    }

    /// The first cold start of an image on this node with no profile anywhere: its mount records one, within
    /// the configured limits, to `profiles/<key>.json` (where later mounts here find it) and publishes it
    /// next to the image and to the S3 index store when configured to, for every other node.
    pub(super) fn record_first_start(&self, image: &str, index: &StoredIndex, spec: &mut MountSpec) {
        let startup = &self.config.startup;
        if !startup.record_profiles.value {
            return;
        }
        let path = self.profile_path(index);
        if let Some(dir) = path.parent().filter(|d| std::fs::create_dir_all(d).is_err()) {
            warn!(dir = %dir.display(), "cannot keep profiles; this start is not recorded");
            return;
        }
        spec.record_profile = Some(path);
        spec.record_limits = Some(startup.record_limits.value);
        if startup.publish_profiles.value {
            let registry = matches!(image.parse::<ImageRef>(), Ok(ImageRef::Registry { .. }));
            spec.publish_profile = registry.then(|| image.to_owned());
            let store = self.config.s3_index_store.value.as_ref();
            spec.publish_profile_s3 = store.map(|s| super::store::s3_profile_key(s, &index.manifest_digest));
        }
        let publish = spec.publish_profile.is_some() || spec.publish_profile_s3.is_some();
        info!(%image, publish, "no startup profile yet; this start records one");
    }
}
