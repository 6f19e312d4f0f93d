//! The `clip_version = 2` fallback to v1 for images the v2 path refuses (a layer media type clip cannot
//! index, an indexing failure such as a registry refusing Range requests): the image is pulled whole
//! without an index. The manifest and config are read directly, every layer blob is downloaded (digest
//! verified), decompressed by its magic bytes (gzip, zstd, or a plain tar), and applied in order to a root
//! filesystem directory with the whiteout rules; the result is packed into a data-carrying archive
//! `STATE_DIR/v1/<key>.clip` whose metadata carries the image's runtime config. A layer that is none of
//! these fails with an error naming its media type.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use clip_format::Archive;
use clip_source::{media_types, Descriptor, Digest, ImageRef, ParsedManifest, RegistrySource, SourceOptions};
use serde_json::Value;
use tracing::info;

use crate::publish::registry_failure;
use crate::run::RunError;
use crate::{pack, ClientError, PackConfig};

/// Largest image config read into memory.
const MAX_CONFIG_BYTES: u64 = 32 << 20;

/// A whole image packed into a v1 archive without an index.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub manifest_digest: String,
    pub key: String,
    pub archive: PathBuf,
}

fn invalid(image: &str, what: &'static str, detail: impl std::fmt::Display) -> RunError {
    ClientError::Registry { image: image.to_owned(), what, detail: detail.to_string() }.into()
}

/// Pulls every layer of `image`, applies them and packs the result (reused when already packed).
pub async fn pull_unpack(state_dir: &Path, image: &str, opts: &SourceOptions) -> Result<Unpacked, RunError> {
    let reference: ImageRef = image.parse().map_err(ClientError::from)?;
    let ImageRef::Registry { registry, repository, tag, digest } = reference else {
        return Err(ClientError::NotARegistry { image: image.to_owned() }.into());
    };
    let host: &str = &registry;
    let fail = |what| move |e| RunError::from(registry_failure(image, host, what, e));
    let source =
        RegistrySource::connect(&registry, &repository, opts).await.map_err(fail("connecting to the registry"))?;
    let mut name = digest.clone().unwrap_or_else(|| tag.clone().unwrap_or_else(|| "latest".into()));
    let (manifest, manifest_digest) = loop {
        let bytes = source.manifest(&name, &media_types::MANIFESTS).await.map_err(fail("fetching the manifest"))?;
        let manifest_digest = Digest::of(&bytes).to_string();
        // An index picks the platform's manifest; anything else is used as an image manifest as it is (its
        // layers may be of types the v2 path refuses: that is why we are here).
        if let Ok(ParsedManifest::Index { manifests }) = clip_source::parse_manifest(&bytes) {
            let entry = manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| opts.platform.matches(p)))
                .ok_or_else(|| invalid(image, "picking a platform", format!("no manifest for {}", opts.platform)))?;
            name = entry.digest.clone();
            continue;
        }
        let manifest =
            serde_json::from_slice::<Value>(&bytes).map_err(|e| invalid(image, "parsing the manifest", e))?;
        break (manifest, manifest_digest);
    };
    let key = manifest_digest.replace(':', "-");
    let dir = state_dir.join("v1");
    let out = dir.join(format!("{key}.clip"));
    if Archive::open(&out).is_ok() {
        info!(archive = %out.display(), "cache hit: v1 archive in the local store");
        return Ok(Unpacked { manifest_digest, key, archive: out });
    }
    std::fs::create_dir_all(&dir).map_err(RunError::io(&dir, "creating the v1 archive store"))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{key}.pull."))
        .tempdir_in(&dir)
        .map_err(RunError::io(&dir, "creating a scratch directory"))?;

    let descriptor = |v: &Value| -> Result<Descriptor, RunError> {
        let digest = v.get("digest").and_then(Value::as_str).unwrap_or_default();
        let digest: Digest = digest.parse().map_err(ClientError::from)?;
        let size = v.get("size").and_then(Value::as_u64).unwrap_or_default();
        Ok(Descriptor::new(v.get("mediaType").and_then(Value::as_str).unwrap_or_default(), digest, size))
    };
    let config_desc = descriptor(manifest.get("config").unwrap_or(&Value::Null))?;
    let config_bytes =
        source.read_small_blob(&config_desc, MAX_CONFIG_BYTES).await.map_err(fail("fetching the config"))?;
    if Digest::of(&config_bytes) != config_desc.digest {
        return Err(invalid(image, "fetching the config", format!("bytes do not match {}", config_desc.digest)));
    }
    let (config, _) = clip_source::parse_image_config(&config_bytes).map_err(ClientError::from)?;

    let rootfs = scratch.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(RunError::io(&rootfs, "creating the root filesystem"))?;
    let layers = manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
    info!(%image, layers = layers.len(), rootfs = %rootfs.display(), "cache miss: v1 fallback pulls and applies every layer");
    for (i, layer) in layers.iter().enumerate() {
        let desc = descriptor(layer)?;
        let blob = scratch.path().join(format!("layer-{i}"));
        clip_source::download_verified(&source, &desc, &blob).await.map_err(fail("downloading a layer"))?;
        let (media_type, digest) = (desc.media_type.clone(), desc.digest.to_string());
        let root = rootfs.clone();
        tokio::task::spawn_blocking(move || apply_layer(&blob, &media_type, &digest, &root))
            .await
            .map_err(|e| ClientError::Task(e.to_string()))??;
    }
    let pack_config = PackConfig { scratch_dir: scratch.path().to_path_buf(), ..PackConfig::default() };
    let mut packed = tokio::task::spawn_blocking(move || pack(&rootfs, &pack_config, None))
        .await
        .map_err(|e| ClientError::Task(e.to_string()))??;
    let meta = &mut packed.contents_mut().meta;
    meta.source = image.to_owned();
    meta.manifest_digest = Some(manifest_digest.clone());
    meta.config = clip_indexer::image_config(&config);
    let size = packed.write_archive(&out)?;
    info!(archive = %out.display(), size, "v1 archive packed");
    Ok(Unpacked { manifest_digest, key, archive: out })
}

/// Applies one layer blob to `root`: whiteouts remove lower entries, opaque markers empty a directory of
/// what lower layers put there, everything else is unpacked over what is there.
fn apply_layer(blob: &Path, media_type: &str, digest: &str, root: &Path) -> Result<(), RunError> {
    let undecodable =
        |why: String| RunError::Layer { digest: digest.to_owned(), media_type: media_type.to_owned(), why };
    let file = std::fs::File::open(blob).map_err(RunError::io(blob, "opening the layer"))?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(RunError::io(blob, "reading the layer"))?.to_vec();
    let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| undecodable(e.to_string()))?)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" || head.is_empty() {
        Box::new(reader)
    } else {
        return Err(undecodable("its compression is not gzip, zstd or none, so clip cannot decompress it".into()));
    };
    let mut archive = tar::Archive::new(stream);
    let mut created: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(|e| undecodable(e.to_string()))? {
        let mut entry = entry.map_err(|e| undecodable(e.to_string()))?;
        let raw = entry.path().map_err(|e| undecodable(e.to_string()))?.into_owned();
        let Some(path) = clean(&raw) else { continue };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..wh..opq" {
            let dir = root.join(&parent);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    if !created.contains(&parent.join(child.file_name())) {
                        remove(&child.path());
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove(&root.join(&parent).join(hidden));
            continue;
        }
        let target = root.join(&path);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !(is_dir && meta.is_dir()) {
                remove(&target);
            }
        }
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(true);
        entry.set_preserve_permissions(true);
        entry.unpack_in(root).map_err(|e| undecodable(format!("{}: {e}", path.display())))?;
        created.insert(path);
    }
    Ok(())
}

/// A tar path relative to the root, without `.` components; `None` for the root itself or a path leaving it.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(path)),
        Ok(_) => drop(std::fs::remove_file(path)),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_kept_inside_the_root() {
        assert_eq!(clean(Path::new("./etc/x")), Some(PathBuf::from("etc/x")));
        assert_eq!(clean(Path::new("/etc/x")), Some(PathBuf::from("etc/x")));
        assert_eq!(clean(Path::new("../x")), None);
        assert_eq!(clean(Path::new("./")), None);
    }

    #[test]
    fn an_undecodable_layer_names_its_media_type() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, [0x04, 0x22, 0x4d, 0x18, 1, 2, 3]).unwrap();
        let e = apply_layer(&blob, "application/vnd.example.tar+lz4", "sha256:00", dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("application/vnd.example.tar+lz4") && msg.contains("cannot decompress"), "{msg}");
    }
}
