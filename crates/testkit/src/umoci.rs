//! The correctness oracle: `umoci unpack` of an OCI layout, whose `rootfs` is what clip's merged tree must
//! equal (DESIGN.md, "Correctness reference").
//!
//! Debian's umoci (0.4.7) does not read zstd layers. For an image with zstd layers, [`umoci_unpack`] first
//! writes a copy of the image into a temporary layout with each zstd layer decompressed (by the reference
//! zstd library) to a plain tar layer — same tar, same diff_id — and unpacks that. The merged tree depends
//! only on the uncompressed tars, so the oracle is unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

use crate::compress::{decompress, Compression};
use crate::error::run;
use crate::oci::{
    Descriptor, OciLayoutBuilder, ANNOTATION_REF_NAME, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD, MEDIA_TYPE_MANIFEST,
};

/// A bundle unpacked by umoci; removed when dropped.
#[derive(Debug)]
pub struct Unpacked {
    dir: TempDir,
}

impl Unpacked {
    /// The bundle directory (`config.json`, `umoci.json`, `rootfs/`).
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    /// The unpacked root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
}

/// Runs `umoci unpack --image DIR:TAG BUNDLE` (as root, so owners, devices and `security.*` xattrs are
/// kept) into a new temporary directory. `tag` must name an image manifest (not an index). zstd layers are
/// handled as the module docs say.
///
/// # Panics
/// When the layout cannot be read or umoci fails; the message holds umoci's stderr.
pub fn umoci_unpack(layout_dir: &Path, tag: &str) -> Unpacked {
    let dir = tempfile::Builder::new()
        .prefix("clip-umoci-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory for umoci: {e}"));
    let unpacked = Unpacked { dir };
    let transcoded = without_zstd(layout_dir, tag, &unpacked.dir.path().join("layout"));
    let layout = if transcoded { unpacked.dir.path().join("layout") } else { layout_dir.to_path_buf() };
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(unpacked.bundle()));
    unpacked
}

/// When `tag`'s manifest has zstd layers, writes the image to a new layout at `out` (same tag) with those
/// layers decompressed, and returns true. Returns false (writing nothing) otherwise.
fn without_zstd(layout_dir: &Path, tag: &str, out: &Path) -> bool {
    let index = read_json(&layout_dir.join("index.json"));
    let Some(desc) =
        index["manifests"].as_array().into_iter().flatten().find(|m| m["annotations"][ANNOTATION_REF_NAME] == tag)
    else {
        panic!("no tag {tag:?} in {}/index.json", layout_dir.display());
    };
    if desc["mediaType"] != MEDIA_TYPE_MANIFEST {
        return false; // let umoci report what it makes of it
    }
    let blob = |d: &Value| layout_dir.join("blobs/sha256").join(digest_hex(d));
    let mut manifest = read_json(&blob(desc));
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if !layers.iter().any(|l| l["mediaType"] == MEDIA_TYPE_LAYER_ZSTD) {
        return false;
    }
    let mut builder = OciLayoutBuilder::at(out);
    let config = &manifest["config"];
    builder.write_blob(config["mediaType"].as_str().unwrap_or_default(), &read(&blob(config)));
    let mut new_layers = Vec::new();
    for layer in &layers {
        let bytes = read(&blob(layer));
        if layer["mediaType"] == MEDIA_TYPE_LAYER_ZSTD {
            let tar = decompress(&bytes, Compression::Zstd);
            let d = builder.write_blob(MEDIA_TYPE_LAYER_TAR, &tar);
            new_layers.push(serde_json::json!({
                "mediaType": d.media_type, "digest": d.digest.as_str(), "size": d.size
            }));
        } else {
            builder.write_blob(layer["mediaType"].as_str().unwrap_or_default(), &bytes);
            new_layers.push(layer.clone());
        }
    }
    manifest["layers"] = Value::Array(new_layers);
    let manifest_json = serde_json::to_vec(&manifest).expect("serializing a serde_json::Value");
    let new_desc: Descriptor = builder.write_blob(MEDIA_TYPE_MANIFEST, &manifest_json);
    builder.tag(tag, &new_desc);
    true
}

fn digest_hex(desc: &Value) -> String {
    let digest = desc["digest"].as_str().unwrap_or_default();
    digest.strip_prefix("sha256:").unwrap_or(digest).to_owned()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}
