//! [`MountSpec`]: what a node asks of the `clip` process that serves one of its shared mounts. The node
//! writes it as JSON to `mounts/<key>/mount.json` and starts `clip serve-mount` on that file; the child
//! turns it into a [`MountConfig`]. Both sides use this one type, so a setting cannot be dropped on the way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clip_image::{ImageError, Location};
use clip_s3::S3Url;
use serde::{Deserialize, Serialize};

use crate::{MountConfig, NodeError};

/// Largest spec file read (a few hundred bytes in practice).
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// One shared mount of a node, as handed to its mount process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// The archive mounted: an index (v2) or a data-carrying archive (v1), local.
    pub archive: PathBuf,
    pub mountpoint: PathBuf,
    /// The node's span cache directory and its bound in bytes.
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    /// Reach the image's registry over plain HTTP.
    pub plain_http: bool,
    /// Record a prefetch profile to this file.
    pub record_profile: Option<PathBuf>,
    /// Prefetch the spans of this profile right after mounting.
    pub profile: Option<PathBuf>,
    /// Do not prefetch the index's startup set.
    #[serde(default)]
    pub no_startup_set: bool,
    /// End the recording of `record_profile` at these limits.
    #[serde(default)]
    pub record_limits: Option<crate::RecordLimits>,
    /// Publish the recorded profile next to this image once the recording ends…
    #[serde(default)]
    pub publish_profile: Option<String>,
    /// …and to this object of the S3 index store.
    #[serde(default, with = "optional_s3_url")]
    pub publish_profile_s3: Option<S3Url>,
    /// The shared content cache tier, `s3://BUCKET/PREFIX`.
    #[serde(with = "optional_s3_url")]
    pub content_cache: Option<S3Url>,
    /// Serve the mount's metrics on this unix socket (the snapshotter scrapes its layer views there).
    #[serde(default)]
    pub metrics_socket: Option<PathBuf>,
}

impl MountSpec {
    /// Writes the spec to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), NodeError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| NodeError::io(path, "encoding the mount spec")(e.into()))?;
        Ok(clip_image::write_atomically(path, |f| {
            std::io::Write::write_all(f, &bytes).map_err(ImageError::io(path, "writing the mount spec"))
        })?)
    }

    /// Reads a spec written by [`MountSpec::save`].
    pub fn load(path: &Path) -> Result<MountSpec, NodeError> {
        use std::io::Read;
        let file = clip_format::open_regular(path).map_err(NodeError::io(path, "reading the mount spec"))?;
        let mut bytes = Vec::new();
        file.take(MAX_SPEC_BYTES).read_to_end(&mut bytes).map_err(NodeError::io(path, "reading the mount spec"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| NodeError::State { path: path.to_path_buf(), message: format!("not a mount spec: {e}") })
    }

    /// The archive's location.
    pub fn location(&self) -> Location {
        Location::Local(self.archive.clone())
    }

    /// How to mount: this spec's settings, a read timeout of `read_timeout`, the rest at their defaults
    /// (no metrics address, no full prefetch, `nosuid`).
    pub fn config(&self, read_timeout: Duration) -> MountConfig {
        let mut config = MountConfig {
            record_profile: self.record_profile.clone(),
            profile: self.profile.clone(),
            no_startup_set: self.no_startup_set,
            record_limits: self.record_limits,
            publish_profile: self.publish_profile.clone(),
            publish_profile_s3: self.publish_profile_s3.clone(),
            content_cache: self.content_cache.clone(),
            metrics_socket: self.metrics_socket.clone(),
            ..MountConfig::default()
        };
        config.open.source.plain_http = self.plain_http;
        config.open.store.cache_dir = Some(self.cache_dir.clone());
        config.open.store.cache_size = self.cache_size;
        config.open.store.read_timeout = read_timeout;
        config
    }
}

/// An optional [`S3Url`] as its `s3://BUCKET/KEY` string.
mod optional_s3_url {
    use clip_s3::S3Url;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(url: &Option<S3Url>, s: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(url) => s.serialize_some(&url.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<S3Url>, D::Error> {
        Option::<String>::deserialize(d)?.map(|u| u.parse().map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::MountSpec;

    #[test]
    fn a_saved_spec_loads_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let spec = MountSpec {
            archive: "/state/indexes/sha256-ab.clip".into(),
            mountpoint: "/state/mounts/sha256-ab/rootfs".into(),
            cache_dir: "/var/cache/clip".into(),
            cache_size: 10 << 30,
            plain_http: true,
            record_profile: None,
            profile: Some("/state/profiles/sha256-ab.json".into()),
            no_startup_set: false,
            record_limits: Some(crate::RecordLimits { seconds: 5, spans: 100 }),
            publish_profile: Some("127.0.0.1:5000/app:1".into()),
            publish_profile_s3: Some("s3://indexes/sha256:ab.profile.json".parse().unwrap()),
            content_cache: Some("s3://spans/fleet".parse().unwrap()),
            metrics_socket: Some("/state/mounts/sha256-ab-layers.sock".into()),
        };
        let path = dir.path().join("mount.json");
        spec.save(&path).unwrap();
        assert_eq!(MountSpec::load(&path).unwrap(), spec);
        let config = spec.config(std::time::Duration::from_secs(30));
        assert_eq!(config.open.store.cache_size, 10 << 30);
        assert!(config.open.source.plain_http && !config.fs.suid && !config.prefetch && config.metrics.is_none());
        assert_eq!(config.metrics_socket, spec.metrics_socket);
    }
}
