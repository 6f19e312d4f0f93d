//! Manifest resolution shared by all sources: parse a manifest or image index, pick the entry for
//! the requested platform (following nested indexes), read and parse the config, and check that
//! the result is a container image clip can index.

use oci_spec::image::{Descriptor as OciDescriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use futures::future::BoxFuture;

use crate::config::{parse_config, ImageConfig};
use crate::digest::{media_types, Descriptor, Digest};
use crate::error::SourceError;
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::source::{read_to_vec, BlobSource};

/// Largest manifest or index we hold in memory.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 8 << 20;
/// Largest config blob we hold in memory.
pub(crate) const MAX_CONFIG_BYTES: u64 = 32 << 20;
/// Nested image indexes followed at most.
const MAX_DEPTH: usize = 4;

/// An image resolved to one platform: its manifest, layers and config.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference it was resolved from.
    pub reference: ImageRef,
    /// Digest of the platform-specific image manifest (not of an index that led to it).
    pub manifest_digest: Digest,
    /// The image manifest exactly as stored.
    pub manifest_bytes: Vec<u8>,
    /// The image's platform: from its config, else from the index entry, else as requested.
    pub platform: Platform,
    /// Layer blobs, bottom first. Every one has a known layer media type
    /// ([`Descriptor::compression`] succeeds).
    pub layers: Vec<Descriptor>,
    /// The parsed config blob.
    pub config: ImageConfig,
    /// The config blob.
    pub config_descriptor: Descriptor,
}

/// Fetches a manifest or index by digest; implementations verify the bytes against the digest.
pub(crate) trait ManifestFetch: Sync {
    fn fetch_manifest<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>, SourceError>>;
}

/// Verifies small metadata bytes (manifests, configs) against their digest.
pub(crate) fn verify(what: &'static str, location: &str, expected: &Digest, bytes: &[u8]) -> Result<(), SourceError> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(SourceError::DigestMismatch {
            what,
            location: location.to_owned(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Resolves manifests for one image reference against one source.
pub(crate) struct Resolver<'a> {
    pub fetch: &'a dyn ManifestFetch,
    pub blobs: &'a dyn BlobSource,
    pub reference: &'a ImageRef,
    pub platform: &'a Platform,
}

enum Parsed {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// A manifest or image index as clip reads it, from [`parse_manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedManifest {
    /// An image manifest: its config blob and its layers, bottom first, every one with a layer media
    /// type clip can read.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layer blobs.
        layers: Vec<Descriptor>,
    },
    /// An image index or manifest list.
    Index {
        /// Its entries, in order.
        manifests: Vec<IndexEntry>,
    },
}

/// One entry of an image index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The entry's media type.
    pub media_type: String,
    /// Its digest as written (resolution only follows `sha256:` digests).
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// The platform it names, if any.
    pub platform: Option<Platform>,
}

/// Parses a manifest or image index (OCI or Docker v2 schema 2) and checks it the way resolving an
/// image does: schema 1 and unknown media types are refused, an image manifest must name a config
/// of a known type and layers of known types with `sha256:` digests. For tests and fuzzing; resolution
/// uses the same code.
pub fn parse_manifest(bytes: &[u8]) -> Result<ParsedManifest, SourceError> {
    let digest = Digest::of(bytes);
    let invalid = |what, reason| SourceError::InvalidManifest {
        what,
        digest: digest.to_string(),
        reference: "(parsed bytes)".into(),
        reason,
    };
    Ok(match parse_document(bytes, &digest, &invalid)? {
        Parsed::Manifest(manifest) => {
            let (config, layers) = image_parts(&manifest, &invalid)?;
            ParsedManifest::Image { config, layers }
        }
        Parsed::Index(index) => ParsedManifest::Index {
            manifests: index
                .manifests()
                .iter()
                .map(|m| IndexEntry {
                    media_type: m.media_type().to_string(),
                    digest: m.digest().to_string(),
                    size: m.size(),
                    platform: m.platform().as_ref().map(platform_of),
                })
                .collect(),
        },
    })
}

/// Parses an image config blob into the [`ImageConfig`] clip keeps and the platform it declares.
pub fn parse_image_config(bytes: &[u8]) -> Result<(ImageConfig, Platform), SourceError> {
    parse_config(bytes).map_err(|reason| SourceError::InvalidManifest {
        what: "image config",
        digest: Digest::of(bytes).to_string(),
        reference: "(parsed bytes)".into(),
        reason,
    })
}

/// Builds the error for an invalid document: `(what, reason)`.
type Invalid<'a> = dyn Fn(&'static str, String) -> SourceError + 'a;

/// A manifest or an index, by its media type (or, without one, by whether it lists manifests).
fn parse_document(bytes: &[u8], digest: &Digest, invalid: &Invalid<'_>) -> Result<Parsed, SourceError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| invalid("manifest", format!("not a JSON manifest: {e}")))?;
    if probe.schema_version == Some(1) {
        return Err(SourceError::UnsupportedMediaType {
            media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
            what: "manifest",
            digest: digest.to_string(),
        });
    }
    let is_index = match probe.media_type.as_deref() {
        Some(media_types::OCI_INDEX | media_types::DOCKER_MANIFEST_LIST) => true,
        Some(media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST) => false,
        None => probe.manifests.is_some(),
        Some(other) => {
            return Err(SourceError::UnsupportedMediaType {
                media_type: other.to_owned(),
                what: "manifest",
                digest: digest.to_string(),
            })
        }
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(|i| Parsed::Index(Box::new(i)))
            .map_err(|e| invalid("image index", e.to_string()))
    } else {
        serde_json::from_slice(bytes)
            .map(|m| Parsed::Manifest(Box::new(m)))
            .map_err(|e| invalid("manifest", e.to_string()))
    }
}

fn sha256_of(desc: &OciDescriptor, what: &'static str, invalid: &Invalid<'_>) -> Result<Digest, SourceError> {
    desc.digest().to_string().parse().map_err(|_| {
        let mut e = invalid(what, "descriptor digest is not sha256:<64 hex> (only sha256 is supported)".into());
        if let SourceError::InvalidManifest { digest, .. } = &mut e {
            *digest = desc.digest().to_string();
        }
        e
    })
}

/// The config and layer descriptors of an image manifest, checked: a known config type, known layer
/// types, sha256 digests.
fn image_parts(manifest: &ImageManifest, invalid: &Invalid<'_>) -> Result<(Descriptor, Vec<Descriptor>), SourceError> {
    let config = Descriptor::new(
        manifest.config().media_type().to_string(),
        sha256_of(manifest.config(), "manifest", invalid)?,
        manifest.config().size(),
    );
    if ![media_types::OCI_CONFIG, media_types::DOCKER_CONFIG].contains(&config.media_type.as_str()) {
        return Err(SourceError::UnsupportedMediaType {
            media_type: config.media_type.clone(),
            what: "config",
            digest: config.digest.to_string(),
        });
    }
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for layer in manifest.layers() {
        let desc =
            Descriptor::new(layer.media_type().to_string(), sha256_of(layer, "manifest", invalid)?, layer.size());
        desc.compression()?;
        layers.push(desc);
    }
    Ok((config, layers))
}

impl Resolver<'_> {
    /// Resolves from a fetched manifest or index.
    pub async fn resolve_bytes(&self, bytes: Vec<u8>, digest: Digest) -> Result<ResolvedImage, SourceError> {
        match self.parse(&bytes, &digest)? {
            Parsed::Manifest(manifest) => self.finish(manifest, bytes, digest, None).await,
            Parsed::Index(index) => self.resolve_entries(index.manifests().clone(), 1).await,
        }
    }

    /// Resolves from the entries of an index (e.g. those of an OCI layout's index.json that carry
    /// the requested tag).
    pub async fn resolve_entries(
        &self,
        mut entries: Vec<OciDescriptor>,
        mut depth: usize,
    ) -> Result<ResolvedImage, SourceError> {
        loop {
            let chosen = select(&entries, self.platform, self.reference)?.clone();
            let digest = self.digest_of(&chosen, "image index")?;
            let bytes = self.fetch.fetch_manifest(&digest).await?;
            match self.parse(&bytes, &digest)? {
                Parsed::Manifest(manifest) => {
                    let hint = chosen.platform().as_ref().map(platform_of);
                    return self.finish(manifest, bytes, digest, hint).await;
                }
                Parsed::Index(index) => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(self.invalid(
                            "image index",
                            &digest,
                            format!("image indexes nested more than {MAX_DEPTH} deep"),
                        ));
                    }
                    entries = index.manifests().clone();
                }
            }
        }
    }

    fn invalid(&self, what: &'static str, digest: &Digest, reason: String) -> SourceError {
        SourceError::InvalidManifest { what, digest: digest.to_string(), reference: self.reference.to_string(), reason }
    }

    fn digest_of(&self, desc: &OciDescriptor, what: &'static str) -> Result<Digest, SourceError> {
        sha256_of(desc, what, &|what, reason| self.invalid(what, &Digest::of(b""), reason))
    }

    fn parse(&self, bytes: &[u8], digest: &Digest) -> Result<Parsed, SourceError> {
        parse_document(bytes, digest, &|what, reason| self.invalid(what, digest, reason))
    }

    async fn finish(
        &self,
        manifest: Box<ImageManifest>,
        manifest_bytes: Vec<u8>,
        manifest_digest: Digest,
        hint: Option<Platform>,
    ) -> Result<ResolvedImage, SourceError> {
        let (config_descriptor, layers) =
            image_parts(&manifest, &|what, reason| self.invalid(what, &manifest_digest, reason))?;

        let config_bytes = read_to_vec(self.blobs, &config_descriptor, "image config", MAX_CONFIG_BYTES).await?;
        verify("image config", &self.blobs.describe(), &config_descriptor.digest, &config_bytes)?;
        let (config, config_platform) = parse_config(&config_bytes)
            .map_err(|reason| self.invalid("image config", &config_descriptor.digest, reason))?;
        if config.diff_ids.len() != layers.len() {
            return Err(self.invalid(
                "image config",
                &config_descriptor.digest,
                format!(
                    "it lists {} diff_ids but manifest {manifest_digest} has {} layers",
                    config.diff_ids.len(),
                    layers.len()
                ),
            ));
        }
        let platform = if !config_platform.os.is_empty() && !config_platform.architecture.is_empty() {
            config_platform
        } else {
            hint.unwrap_or_else(|| self.platform.clone())
        };
        Ok(ResolvedImage {
            reference: self.reference.clone(),
            manifest_digest,
            manifest_bytes,
            platform,
            layers,
            config,
            config_descriptor,
        })
    }
}

fn platform_of(p: &oci_spec::image::Platform) -> Platform {
    Platform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone().filter(|v| !v.is_empty()),
    }
}

/// Picks the index entry for `wanted`: the first entry whose platform matches; failing that, the
/// only entry that names no platform (single images in OCI layouts usually do not).
pub(crate) fn select<'e>(
    entries: &'e [OciDescriptor],
    wanted: &Platform,
    reference: &ImageRef,
) -> Result<&'e OciDescriptor, SourceError> {
    if let Some(entry) = entries.iter().find(|e| e.platform().as_ref().is_some_and(|p| wanted.matches(&platform_of(p))))
    {
        return Ok(entry);
    }
    let unnamed: Vec<&OciDescriptor> = entries.iter().filter(|e| e.platform().is_none()).collect();
    if let [only] = unnamed.as_slice() {
        return Ok(only);
    }
    let mut available: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform().as_ref().map(platform_of))
        // BuildKit attestation manifests are tagged unknown/unknown.
        .filter(|p| p.os != "unknown")
        .map(|p| p.to_string())
        .collect();
    available.dedup();
    Err(SourceError::PlatformNotFound {
        reference: reference.to_string(),
        wanted: wanted.to_string(),
        available: if available.is_empty() { "none".to_owned() } else { available.join(", ") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> Vec<OciDescriptor> {
        let idx: ImageIndex = serde_json::from_str(json).unwrap();
        idx.manifests().clone()
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn selects_by_platform_and_lists_alternatives() {
        let entries = index(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
            {{"mediaType":"{m}","digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{m}","digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{m}","digest":"{C}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            media_types::DOCKER_MANIFEST_LIST,
            m = media_types::DOCKER_MANIFEST
        ));
        let r: ImageRef = "example.com/a:b".parse().unwrap();
        let pick = |p: &str| select(&entries, &p.parse().unwrap(), &r).map(|e| e.digest().to_string());
        assert_eq!(pick("linux/amd64").unwrap(), A);
        assert_eq!(pick("linux/arm64").unwrap(), B);
        assert_eq!(pick("linux/arm64/v8").unwrap(), B);
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(err.contains("no manifest for platform linux/s390x"), "{err}");
        assert!(err.contains("available: linux/amd64, linux/arm64/v8 ("), "{err}");
    }

    #[test]
    fn manifests_and_indexes_parse_and_bad_ones_are_refused() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{A}","size":7}},
            "layers":[{{"mediaType":"{}","digest":"{B}","size":9}}]}}"#,
            media_types::OCI_MANIFEST,
            media_types::OCI_CONFIG,
            media_types::OCI_LAYER_GZIP
        );
        match parse_manifest(manifest.as_bytes()).unwrap() {
            ParsedManifest::Image { config, layers } => {
                assert_eq!((config.digest.to_string(), config.size), (A.to_owned(), 7));
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0].digest.to_string(), B);
            }
            other => panic!("{other:?}"),
        }
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{C}","size":3,
            "platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media_types::OCI_MANIFEST
        );
        let ParsedManifest::Index { manifests } = parse_manifest(index.as_bytes()).unwrap() else { panic!() };
        assert_eq!(manifests[0].platform, Some("linux/arm64/v8".parse().unwrap()));

        let bad_layer = manifest.replace(media_types::OCI_LAYER_GZIP, "application/x-lz4");
        let md5 = manifest.replace(B, "md5:0123");
        for (bytes, needle) in [
            (&b"{"[..], "not a JSON manifest"),
            (br#"{"schemaVersion":1}"#, "schema 1"),
            (br#"{"mediaType":"text/plain"}"#, "text/plain"),
            (bad_layer.as_bytes(), "application/x-lz4"),
            (md5.as_bytes(), "only sha256"),
        ] {
            let err = parse_manifest(bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(parse_image_config(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
        )
        .is_ok());
        assert!(parse_image_config(b"[]").unwrap_err().to_string().contains("invalid image config"));
    }

    #[test]
    fn an_only_unnamed_entry_is_taken() {
        let entries = index(&format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{A}","size":1}}]}}"#,
            media_types::OCI_MANIFEST
        ));
        let r: ImageRef = "oci:/x".parse().unwrap();
        let chosen = select(&entries, &"linux/riscv64".parse().unwrap(), &r).unwrap();
        assert_eq!(chosen.digest().to_string(), A);
    }
}
