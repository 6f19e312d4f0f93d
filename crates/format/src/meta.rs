//! Image metadata: the `META` section, stored as JSON (language-neutral, small, sorted keys for deterministic
//! bytes). Holds where the image came from, its runtime config and the layer table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything about the image that is not the file tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The image reference the index was built from, as normalized by the source (e.g.
    /// `127.0.0.1:5000/debian:bookworm`, `oci:/images/app:v1`); for data-carrying archives, the root dir.
    pub source: String,
    /// The image manifest's digest (`sha256:…` in META), when built from an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<crate::Digest>,
    /// The platform the manifest was resolved for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The image's runtime config.
    #[serde(default)]
    pub config: ImageConfig,
    /// Uncompressed bytes per span the index was built with.
    pub span_size: u64,
    /// Layers in order, bottom first. A data-carrying archive has exactly one: its own data section.
    pub layers: Vec<LayerMeta>,
    /// Data-carrying archives only: where the data section is when this file holds none, e.g.
    /// `s3://bucket/key` of the full archive (a local metadata copy of an archive pushed to S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_location: Option<String>,
}

/// An OCI platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The parts of the OCI image config a runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// How a layer's bytes are stored, which decides how a span is decoded. The one compression type of the
/// workspace: `clip-codec` decodes by it and `clip-source` maps layer media types to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Plain tar (or plain data): offsets map straight to byte ranges.
    None,
    /// gzip: spans resume from zran checkpoints (bit offset + 32 KiB window).
    Gzip,
    /// zstd: spans start at frame boundaries.
    Zstd,
}

impl Compression {
    /// Every variant, for option matrices.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// The name as META stores it: `none`, `gzip` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Guess from the first bytes of a blob: gzip and zstd (incl. skippable frames) by magic number,
    /// anything else is taken as uncompressed.
    pub fn sniff(prefix: &[u8]) -> Self {
        match prefix {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50 => Self::Zstd,
            _ => Self::None,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One layer: the blob it is in, and its slice of the span table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub media_type: String,
    /// The compressed blob's digest (`sha256:…` in META).
    pub digest: crate::Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// The uncompressed tar's digest (none for data-carrying archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<crate::Digest>,
    pub uncompressed_size: u64,
    pub compression: Compression,
    /// This layer's first record in the span table.
    pub first_span: crate::SpanId,
    /// Number of span records of this layer.
    pub span_count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(Compression::sniff(&[0x5a, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"etc/passwd"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }

    #[test]
    fn the_manifest_digest_reads_and_writes_as_the_string_it_always_was() {
        let digest = format!("sha256:{}", "0f".repeat(32));
        let old = format!(r#"{{"source":"r/a:b","manifest_digest":"{digest}","span_size":1,"layers":[]}}"#);
        let meta: ImageMeta = serde_json::from_str(&old).unwrap();
        assert_eq!(meta.manifest_digest.map(|d| d.to_string()), Some(digest.clone()));
        assert!(serde_json::to_string(&meta).unwrap().contains(&format!(r#""manifest_digest":"{digest}""#)));
        let not_sha256 = serde_json::from_str::<ImageMeta>(&old.replace(&digest, "sha256:0f")).unwrap_err();
        assert!(not_sha256.to_string().contains("invalid digest"), "{not_sha256}");
    }

    #[test]
    fn data_location_is_optional_and_round_trips() {
        // META written before the field existed still reads.
        let old = r#"{"source":"/rootfs","span_size":4194304,"layers":[]}"#;
        let meta: ImageMeta = serde_json::from_str(old).unwrap();
        assert_eq!(meta.data_location, None);
        assert!(!serde_json::to_string(&meta).unwrap().contains("data_location"));

        let with = ImageMeta { data_location: Some("s3://bucket/key.clip".into()), ..meta };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""data_location":"s3://bucket/key.clip""#), "{json}");
        assert_eq!(serde_json::from_str::<ImageMeta>(&json).unwrap(), with);
    }
}
