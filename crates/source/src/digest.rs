//! Content addresses: [`Digest`], blob [`Descriptor`]s and the layer media types clip understands.

use clip_format::Compression;

use crate::error::SourceError;

/// A validated `sha256:<64 lowercase hex>` content digest: the format's type (parsing it accepts only
/// sha256, so a digest is safe to use as a file name under `blobs/sha256/`).
pub use clip_format::Digest;

/// Parses a digest a registry or a user gave (`sha256:<64 lowercase hex>`), failing with
/// [`SourceError::InvalidDigest`].
pub fn parse_digest(input: &str) -> Result<Digest, SourceError> {
    input.parse().map_err(|_| SourceError::InvalidDigest { input: input.to_owned() })
}

/// OCI and Docker media type names used by this crate.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker v2 schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker v2 manifest list.
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// Every manifest media type clip asks registries for.
    pub const MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

    /// Layer media types and their compression.
    pub(crate) const LAYERS: [(&str, super::Compression); 10] = {
        use clip_format::Compression::{Gzip, None, Zstd};
        [
            (OCI_LAYER_TAR, None),
            (OCI_LAYER_GZIP, Gzip),
            (OCI_LAYER_ZSTD, Zstd),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar", None),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Zstd),
            (DOCKER_LAYER_GZIP, Gzip),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar", None),
            ("application/vnd.docker.image.rootfs.diff.tar.zstd", Zstd),
        ]
    };
}

/// A blob as a manifest names it: media type, digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// The media type, e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// The blob's content digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// A descriptor from its parts.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.into(), digest, size }
    }

    /// The compression of a layer blob, or an error naming an unknown layer media type.
    pub fn compression(&self) -> Result<Compression, SourceError> {
        media_types::LAYERS
            .iter()
            .find(|(name, _)| *name == self.media_type)
            .map(|(_, compression)| *compression)
            .ok_or_else(|| SourceError::UnsupportedMediaType {
                media_type: self.media_type.clone(),
                what: "layer",
                digest: self.digest.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_compression_from_media_type() {
        let d = |mt: &str| Descriptor::new(mt, Digest::of(b"x"), 1);
        assert_eq!(d(media_types::OCI_LAYER_GZIP).compression().unwrap(), Compression::Gzip);
        assert_eq!(d(media_types::OCI_LAYER_ZSTD).compression().unwrap(), Compression::Zstd);
        assert_eq!(d(media_types::OCI_LAYER_TAR).compression().unwrap(), Compression::None);
        assert_eq!(d(media_types::DOCKER_LAYER_GZIP).compression().unwrap(), Compression::Gzip);
        assert_eq!(
            d("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").compression().unwrap(),
            Compression::Gzip
        );
        let err = d("application/vnd.cncf.helm.chart.content.v1.tar+gzip").compression().unwrap_err();
        assert!(err.to_string().contains("application/vnd.cncf.helm.chart.content.v1.tar+gzip"));
    }
}
