//! The `clip_version = 2` fallback to v1 for images the v2 path refuses (a layer media type clip cannot
//! index lazily, an indexing failure such as a registry refusing Range requests): the image is pulled whole
//! without a lazy index. Every blob is downloaded (digest verified) into an OCI layout's blob store in a
//! scratch directory; each layer's compression is taken from its magic bytes (gzip, zstd, or a plain tar),
//! so a layer of an unknown media type is read as what it is; the layers are then indexed and merged by
//! the indexer (the one layer applier of clip, checked against `umoci unpack`) and extracted to a root
//! filesystem, which is packed into a data-carrying archive `STATE_DIR/v1/<key>.clip` whose metadata
//! carries the image's runtime config. A layer that is none of these fails with an error naming its media
//! type.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_format::{Archive, Compression};
use clip_source::{
    media_types, BlobSource, Descriptor, Digest, ImageRef, LayoutSource, ParsedManifest, RegistrySource, ResolvedImage,
    SourceOptions,
};
use clip_store::{ContentStore, SourceBlobs, StoreConfig};
use serde_json::Value;
use tracing::info;

use crate::run::NodeError;
use clip_image::{pack, registry_failure, ImageError, Opened, PackConfig};

/// Largest image config read into memory.
const MAX_CONFIG_BYTES: u64 = 32 << 20;

/// A whole image packed into a v1 archive without an index.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub manifest_digest: Digest,
    pub key: String,
    pub archive: PathBuf,
}

fn invalid(image: &str, what: &'static str, detail: impl std::fmt::Display) -> NodeError {
    ImageError::Registry { image: image.to_owned(), what, detail: detail.to_string() }.into()
}

/// Pulls every layer of `image`, applies them and packs the result (reused when already packed).
pub async fn pull_unpack(state_dir: &Path, image: &str, opts: &SourceOptions) -> Result<Unpacked, NodeError> {
    let reference: ImageRef = image.parse().map_err(ImageError::from)?;
    let ImageRef::Registry { registry, repository, tag, digest } = reference else {
        return Err(ImageError::NotARegistry { image: image.to_owned() }.into());
    };
    let host: &str = &registry;
    let fail = |what| move |e| NodeError::from(registry_failure(image, host, what, e));
    let source =
        RegistrySource::connect(&registry, &repository, opts).await.map_err(fail("connecting to the registry"))?;
    let mut name = digest.map_or_else(|| tag.clone().unwrap_or_else(|| "latest".into()), |d| d.to_string());
    let (manifest, manifest_digest) = loop {
        let bytes = source.manifest(&name, &media_types::MANIFESTS).await.map_err(fail("fetching the manifest"))?;
        let manifest_digest = Digest::of(&bytes);
        // An index picks the platform's manifest; anything else is used as an image manifest as it is (its
        // layers may be of types the v2 path refuses: that is why we are here).
        if let Ok(ParsedManifest::Index { manifests }) = clip_source::parse_manifest(&bytes) {
            let entry = manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| opts.platform.matches(p)))
                .ok_or_else(|| invalid(image, "picking a platform", format!("no manifest for {}", opts.platform)))?;
            let entry_digest = clip_source::parse_digest(&entry.digest)
                .map_err(|e| invalid(image, "picking a platform", format!("its index lists {e}")))?;
            name = entry_digest.to_string();
            continue;
        }
        let manifest =
            serde_json::from_slice::<Value>(&bytes).map_err(|e| invalid(image, "parsing the manifest", e))?;
        break (manifest, manifest_digest);
    };
    let key = manifest_digest.dashed();
    let dir = state_dir.join("v1");
    let out = dir.join(format!("{key}.clip"));
    if Archive::open(&out).is_ok() {
        info!(archive = %out.display(), "cache hit: v1 archive in the local store");
        return Ok(Unpacked { manifest_digest, key, archive: out });
    }
    std::fs::create_dir_all(&dir).map_err(NodeError::io(&dir, "creating the v1 archive store"))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{key}.pull."))
        .tempdir_in(&dir)
        .map_err(NodeError::io(&dir, "creating a scratch directory"))?;

    let descriptor = |v: &Value| -> Result<Descriptor, NodeError> {
        let digest = v.get("digest").and_then(Value::as_str).unwrap_or_default();
        let digest = clip_source::parse_digest(digest).map_err(ImageError::from)?;
        let size = v.get("size").and_then(Value::as_u64).unwrap_or_default();
        Ok(Descriptor::new(v.get("mediaType").and_then(Value::as_str).unwrap_or_default(), digest, size))
    };
    let config_descriptor = descriptor(manifest.get("config").unwrap_or(&Value::Null))?;
    let config_bytes =
        source.read_small_blob(&config_descriptor, MAX_CONFIG_BYTES).await.map_err(fail("fetching the config"))?;
    if Digest::of(&config_bytes) != config_descriptor.digest {
        return Err(invalid(image, "fetching the config", format!("bytes do not match {}", config_descriptor.digest)));
    }
    let (config, platform) = clip_source::parse_image_config(&config_bytes).map_err(ImageError::from)?;

    // Every layer into the scratch layout's blob store, verified, typed by what its bytes are.
    let layout = scratch.path().join("layout");
    let blob_dir = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).map_err(NodeError::io(&blob_dir, "creating the scratch blob store"))?;
    let listed = manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
    info!(%image, layers = listed.len(), "cache miss: v1 fallback pulls every layer");
    let mut layers = Vec::with_capacity(listed.len());
    for layer in &listed {
        let desc = descriptor(layer)?;
        let blob = blob_dir.join(desc.digest.hex());
        clip_source::download_verified(&source, &desc, &blob).await.map_err(fail("downloading a layer"))?;
        let media_type = media_type_by_magic(&blob, &desc)?;
        layers.push(Descriptor::new(media_type, desc.digest, desc.size));
    }
    let resolved = ResolvedImage {
        reference: ImageRef::Layout { dir: layout.clone(), tag: None },
        manifest_digest,
        manifest_bytes: serde_json::to_vec(&manifest).unwrap_or_default(),
        platform,
        layers,
        config: config.clone(),
        config_descriptor,
    };

    // Index and merge the layers, then extract the merged tree.
    let blobs: Arc<dyn BlobSource> = Arc::new(LayoutSource::new(&layout));
    let index = scratch.path().join("merged.clip");
    super::store::build(&resolved, blobs.clone(), &index, image, None).await?;
    let archive = Arc::new(Archive::open(&index).map_err(ImageError::format(&index))?);
    let store =
        ContentStore::new(archive.clone(), Arc::new(SourceBlobs::new(&archive, blobs.clone())), StoreConfig::default());
    let opened = Opened { archive, store: Arc::new(store), source: Some(blobs), data_object: None };
    let rootfs = scratch.path().join("rootfs");
    clip_image::extract(&opened, &rootfs, None).await?;

    let pack_config = PackConfig { scratch_dir: scratch.path().to_path_buf(), ..PackConfig::default() };
    let mut packed = tokio::task::spawn_blocking(move || pack(&rootfs, &pack_config, None))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))??;
    let meta = &mut packed.contents_mut().meta;
    meta.source = image.to_owned();
    meta.manifest_digest = Some(manifest_digest);
    meta.config = config.runtime.clone();
    let size = packed.write_archive(&out)?;
    info!(archive = %out.display(), size, "v1 archive packed");
    Ok(Unpacked { manifest_digest, key, archive: out })
}

/// The media type of the layer blob at `blob` by its first bytes: gzip, zstd or a plain tar (the manifest's
/// may be one clip does not index, which is why we are here).
fn media_type_by_magic(blob: &Path, desc: &Descriptor) -> Result<&'static str, NodeError> {
    let mut head = [0u8; 262];
    let mut file = std::fs::File::open(blob).map_err(NodeError::io(blob, "opening the layer"))?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]).map_err(NodeError::io(blob, "reading the layer"))? {
            0 => break,
            n => got += n,
        }
    }
    let head = &head[..got];
    let plain_tar = head.is_empty() || head.len() >= 262 && &head[257..262] == b"ustar";
    Ok(match Compression::sniff(head) {
        Compression::Gzip => media_types::OCI_LAYER_GZIP,
        Compression::Zstd => media_types::OCI_LAYER_ZSTD,
        Compression::None if plain_tar => media_types::OCI_LAYER_TAR,
        Compression::None => {
            return Err(NodeError::Layer {
                digest: desc.digest,
                media_type: desc.media_type.clone(),
                why: "its compression is not gzip, zstd or none, so clip cannot decompress it".into(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_layer_names_its_media_type() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, [0x04, 0x22, 0x4d, 0x18, 1, 2, 3]).unwrap();
        let desc = Descriptor::new("application/vnd.example.tar+lz4", Digest::of(b"x"), 7);
        let msg = media_type_by_magic(&blob, &desc).unwrap_err().to_string();
        assert!(msg.contains("application/vnd.example.tar+lz4") && msg.contains("cannot decompress"), "{msg}");
    }
}
