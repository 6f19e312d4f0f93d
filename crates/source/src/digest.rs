//! Content addresses: [`Digest`], blob [`Descriptor`]s and the layer media types clip understands.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use clip_format::Compression;

use crate::error::SourceError;

/// A validated `sha256:<64 lowercase hex>` content digest.
///
/// Only sha256 is accepted: it is what every registry and tool produces, and a validated digest
/// is safe to use as a file name under `blobs/sha256/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

const SHA256_PREFIX: &str = "sha256:";

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(data).into())
    }

    /// The digest with the given raw sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(format!("{SHA256_PREFIX}{}", hex::encode(hash)))
    }

    /// The 64 hex digits after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    /// The algorithm name, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s
            .strip_prefix(SHA256_PREFIX)
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if valid {
            Ok(Digest(s.to_owned()))
        } else {
            Err(SourceError::InvalidDigest { input: s.to_owned() })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
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

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_parses_and_exposes_hex() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(Digest::of(b""), d);
    }

    #[test]
    fn digest_rejects_bad_syntax() {
        for bad in [
            "",
            HEX,
            "sha256:",
            &format!("sha256:{}", &HEX[1..]),
            &format!("sha256:{HEX}0"),
            &format!("sha256:{}", HEX.to_uppercase()),
            &format!("sha512:{HEX}"),
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000",
            &format!("sha256:{}/x", &HEX[2..]),
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert!(matches!(err, SourceError::InvalidDigest { .. }), "{bad}: {err}");
        }
    }

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
