//! OCI image layouts written from generated layers, and pushing them to a registry with `skopeo`.
//!
//! [`OciLayoutBuilder`] writes `oci-layout`, `index.json` (each tag as an
//! `org.opencontainers.image.ref.name` annotation) and `blobs/sha256/*`. An [`Image`] is a list of
//! [`Layer`]s (uncompressed tar + the blob as stored) and an [`ImageConfig`]; its config's
//! `rootfs.diff_ids` are computed from the uncompressed tars. Output is deterministic: the same image gives
//! the same digests.
//!
//! ```no_run
//! use clip_testkit::{Compression, Image, Layer, LayerBuilder, OciLayoutBuilder};
//! let tar = LayerBuilder::new().file("hello", "world\n").finish();
//! let image = Image::new(vec![Layer::new(tar, Compression::Gzip)]);
//! let mut layout = OciLayoutBuilder::new();
//! let built = layout.add_image("v1", &image);
//! println!("{} at {}", built.manifest.digest, layout.reference("v1"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::compress::{compress, decompress, Compression};
use crate::error::run;

/// Media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Media type of an image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Annotation naming a tag in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A `sha256:<hex>` content digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// A digest from a `sha256:<hex>` string, not checked (for tests that handle malformed digests too).
    pub fn from_str_unchecked(s: &str) -> Self {
        Digest(s.to_owned())
    }

    /// A digest from a `sha256:<64 lower-case hex digits>` string, or `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Digest(s.to_owned()))
    }

    /// The digest as `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// Digest of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Self {
        Descriptor { media_type: media_type.to_owned(), digest: Digest::sha256(bytes), size: bytes.len() as u64 }
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mediaType".into(), json!(self.media_type));
        m.insert("digest".into(), json!(self.digest.as_str()));
        m.insert("size".into(), json!(self.size));
        m
    }
}

/// One layer: the uncompressed tar (its digest is the diff_id) and the blob as stored in the image.
#[derive(Clone, Debug)]
pub struct Layer {
    tar: Vec<u8>,
    blob: Vec<u8>,
    compression: Compression,
    media_type: String,
    digest: Digest,
    diff_id: Digest,
}

impl Layer {
    /// A layer whose blob is `tar` compressed with [`compress`].
    pub fn new(tar: Vec<u8>, compression: Compression) -> Self {
        let blob = compress(&tar, compression);
        Self::from_blob_unchecked(tar, blob, compression)
    }

    /// A layer with a blob made elsewhere (e.g. [`crate::gzip_multi_member`]).
    ///
    /// # Panics
    /// If `blob` does not decompress to `tar`.
    pub fn from_blob(tar: Vec<u8>, blob: Vec<u8>, compression: Compression) -> Self {
        assert!(
            decompress(&blob, compression) == tar,
            "Layer::from_blob: the {} blob does not decompress to the given tar",
            compression.name()
        );
        Self::from_blob_unchecked(tar, blob, compression)
    }

    /// A layer with a blob made elsewhere, trusted to decompress to `tar`.
    pub(crate) fn from_blob_unchecked(tar: Vec<u8>, blob: Vec<u8>, compression: Compression) -> Self {
        let digest = Digest::sha256(&blob);
        let diff_id = Digest::sha256(&tar);
        Layer {
            tar,
            blob,
            compression,
            media_type: crate::compress::layer_media_type(compression).to_owned(),
            digest,
            diff_id,
        }
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// The blob as stored in the image.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// How the blob is compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The same layer declared with another media type in the manifest (e.g. an unknown one, or a Docker
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`); the blob is unchanged.
    pub fn with_media_type(mut self, media_type: &str) -> Self {
        self.media_type = media_type.to_owned();
        self
    }

    /// The media type the manifest declares (by default the one of its compression).
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// Digest of the blob (what the manifest names).
    pub fn digest(&self) -> Digest {
        self.digest.clone()
    }

    /// Digest of the uncompressed tar (what the config's `rootfs.diff_ids` names).
    pub fn diff_id(&self) -> Digest {
        self.diff_id.clone()
    }

    /// The manifest descriptor of the blob.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor { media_type: self.media_type.clone(), digest: self.digest.clone(), size: self.blob.len() as u64 }
    }
}

/// An OS/architecture pair of a manifest in an image index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

/// The image config fields tests care about. `Default` is linux/amd64 with a `PATH` and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    /// `architecture`.
    pub architecture: String,
    /// `os`.
    pub os: String,
    /// `variant`.
    pub variant: Option<String>,
    /// `created` (RFC 3339); fixed by default so output is deterministic.
    pub created: String,
    /// `config.Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `config.ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// `config.Volumes` keys.
    pub volumes: Vec<String>,
    /// `config.StopSignal`.
    pub stop_signal: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            created: "2023-11-14T22:13:20Z".into(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: None,
            entrypoint: None,
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
        }
    }
}

impl ImageConfig {
    /// The platform this config declares.
    pub fn platform(&self) -> Platform {
        Platform { os: self.os.clone(), architecture: self.architecture.clone(), variant: self.variant.clone() }
    }

    /// The config JSON for these layers.
    pub fn to_json(&self, layers: &[Layer]) -> Vec<u8> {
        let mut c = Map::new();
        if let Some(user) = &self.user {
            c.insert("User".into(), json!(user));
        }
        if !self.exposed_ports.is_empty() {
            let ports: Map<_, _> = self.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
            c.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if let Some(ep) = &self.entrypoint {
            c.insert("Entrypoint".into(), json!(ep));
        }
        if let Some(cmd) = &self.cmd {
            c.insert("Cmd".into(), json!(cmd));
        }
        if !self.volumes.is_empty() {
            let vols: Map<_, _> = self.volumes.iter().map(|v| (v.clone(), json!({}))).collect();
            c.insert("Volumes".into(), Value::Object(vols));
        }
        if let Some(wd) = &self.working_dir {
            c.insert("WorkingDir".into(), json!(wd));
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        if let Some(sig) = &self.stop_signal {
            c.insert("StopSignal".into(), json!(sig));
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id().to_string()).collect();
        let history: Vec<Value> = (0..layers.len())
            .map(|i| json!({"created": self.created, "created_by": format!("clip-testkit layer {i}")}))
            .collect();
        let mut root = Map::new();
        root.insert("created".into(), json!(self.created));
        root.insert("architecture".into(), json!(self.architecture));
        root.insert("os".into(), json!(self.os));
        if let Some(v) = &self.variant {
            root.insert("variant".into(), json!(v));
        }
        root.insert("config".into(), Value::Object(c));
        root.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
        root.insert("history".into(), json!(history));
        to_vec(&Value::Object(root))
    }
}

/// An image: a config and its layers, lowest first.
#[derive(Clone, Debug)]
pub struct Image {
    /// The config.
    pub config: ImageConfig,
    /// The layers, lowest first.
    pub layers: Vec<Layer>,
}

impl Image {
    /// An image with the default config.
    pub fn new(layers: Vec<Layer>) -> Self {
        Image { config: ImageConfig::default(), layers }
    }

    /// The same image declaring another platform in its config (and so in an image index).
    pub fn with_platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Self {
        self.config.os = os.to_owned();
        self.config.architecture = architecture.to_owned();
        self.config.variant = variant.map(str::to_owned);
        self
    }

    /// An image from uncompressed tars, all compressed the same way.
    pub fn from_tars(tars: Vec<Vec<u8>>, compression: Compression) -> Self {
        Image::new(tars.into_iter().map(|t| Layer::new(t, compression)).collect())
    }
}

/// What [`OciLayoutBuilder::add_image`] wrote.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The manifest's descriptor.
    pub manifest: Descriptor,
    /// The manifest JSON.
    pub manifest_json: Vec<u8>,
    /// The config's descriptor.
    pub config: Descriptor,
    /// The config JSON.
    pub config_json: Vec<u8>,
    /// The layer descriptors, lowest first.
    pub layers: Vec<Descriptor>,
    /// The diff_ids, lowest first.
    pub diff_ids: Vec<Digest>,
}

/// What [`OciLayoutBuilder::add_index`] wrote.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    /// The image index's descriptor.
    pub index: Descriptor,
    /// The image index JSON.
    pub index_json: Vec<u8>,
    /// Each platform's manifest.
    pub manifests: Vec<(Platform, BuiltImage)>,
}

/// Writes an OCI image layout directory. `index.json` is rewritten after every tag, so the layout is valid
/// at all times.
#[derive(Debug)]
pub struct OciLayoutBuilder {
    dir: PathBuf,
    refs: Vec<(String, Descriptor)>,
    _temp: Option<TempDir>,
}

impl Default for OciLayoutBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl OciLayoutBuilder {
    /// A layout in a new temporary directory, removed when the builder is dropped.
    pub fn new() -> Self {
        let temp = tempfile::Builder::new()
            .prefix("clip-oci-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temporary OCI layout directory: {e}"));
        let mut b = Self::at(temp.path());
        b._temp = Some(temp);
        b
    }

    /// A layout at `dir` (created if missing), kept after the builder is dropped.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("creating {}: {e}", blobs.display()));
        write(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);
        let b = OciLayoutBuilder { dir, refs: Vec::new(), _temp: None };
        b.write_index();
        b
    }

    /// The layout directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The skopeo-style reference `oci:DIR:TAG` of a tag in this layout.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// Path of the blob with this digest.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Writes a blob and returns its descriptor.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let desc = Descriptor::of(media_type, bytes);
        write(&self.blob_path(&desc.digest), bytes);
        desc
    }

    /// Names `descriptor` (a manifest or index already written as a blob) `tag` in `index.json`, replacing
    /// an earlier entry of that tag.
    pub fn tag(&mut self, tag: &str, descriptor: &Descriptor) {
        self.refs.retain(|(t, _)| t != tag);
        self.refs.push((tag.to_owned(), descriptor.clone()));
        self.write_index();
    }

    /// Writes an image's layers, config and manifest, and tags the manifest.
    pub fn add_image(&mut self, tag: &str, image: &Image) -> BuiltImage {
        let built = self.write_image(image);
        self.tag(tag, &built.manifest);
        built
    }

    /// Writes every image (one per platform, taken from each config) and an image index over them, and tags
    /// the index.
    pub fn add_index(&mut self, tag: &str, images: &[Image]) -> BuiltIndex {
        let manifests: Vec<(Platform, BuiltImage)> =
            images.iter().map(|i| (i.config.platform(), self.write_image(i))).collect();
        let entries: Vec<Value> = manifests
            .iter()
            .map(|(p, b)| {
                let mut d = b.manifest.to_json();
                d.insert("platform".into(), platform_json(p));
                Value::Object(d)
            })
            .collect();
        let index_json = to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": entries,
        }));
        let index = self.write_blob(MEDIA_TYPE_INDEX, &index_json);
        self.tag(tag, &index);
        BuiltIndex { index, index_json, manifests }
    }

    fn write_image(&self, image: &Image) -> BuiltImage {
        let layers: Vec<Descriptor> = image
            .layers
            .iter()
            .map(|l| {
                let desc = l.descriptor();
                write(&self.blob_path(&desc.digest), l.blob());
                desc
            })
            .collect();
        let config_json = image.config.to_json(&image.layers);
        let config = self.write_blob(MEDIA_TYPE_CONFIG, &config_json);
        let manifest_json = to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": Value::Object(config.to_json()),
            "layers": layers.iter().map(|d| Value::Object(d.to_json())).collect::<Vec<_>>(),
        }));
        let manifest = self.write_blob(MEDIA_TYPE_MANIFEST, &manifest_json);
        BuiltImage {
            manifest,
            manifest_json,
            config,
            config_json,
            layers,
            diff_ids: image.layers.iter().map(Layer::diff_id).collect(),
        }
    }

    fn write_index(&self) {
        let manifests: Vec<Value> = self
            .refs
            .iter()
            .map(|(tag, d)| {
                let mut m = d.to_json();
                m.insert("annotations".into(), json!({ ANNOTATION_REF_NAME: tag }));
                Value::Object(m)
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests});
        write(&self.dir.join("index.json"), &to_vec(&index));
    }
}

/// Pushes `tag` of the OCI layout at `layout_dir` to `registry_addr` (`127.0.0.1:PORT`, plain HTTP) as
/// `repo_tag` (`REPO:TAG`) with `skopeo copy --preserve-digests`: blobs are copied as they are (never
/// recompressed), so the pushed digests equal the layout's. An image index is pushed with `--all`.
///
/// # Panics
/// When skopeo fails; the message holds its stderr.
pub fn push(layout_dir: &Path, tag: &str, registry_addr: &str, repo_tag: &str) {
    push_with_creds(layout_dir, tag, registry_addr, repo_tag, None);
}

/// [`push`] with basic-auth credentials (`(user, password)`) for a registry started with
/// [`crate::Registry::start_with_auth`].
pub fn push_with_creds(layout_dir: &Path, tag: &str, registry_addr: &str, repo_tag: &str, creds: Option<(&str, &str)>) {
    let policy = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("creating a skopeo policy file: {e}"));
    write(policy.path(), br#"{"default":[{"type":"insecureAcceptAnything"}]}"#);
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(policy.path()).args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
    if is_index(layout_dir, tag) {
        cmd.arg("--all");
    }
    if let Some((user, pass)) = creds {
        cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
    }
    cmd.arg(format!("oci:{}:{tag}", layout_dir.display())).arg(format!("docker://{registry_addr}/{repo_tag}"));
    run(&mut cmd);
}

/// Whether `tag` in the layout's `index.json` names an image index (rather than a manifest).
fn is_index(layout_dir: &Path, tag: &str) -> bool {
    let path = layout_dir.join("index.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let index: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"][ANNOTATION_REF_NAME] == tag)
        .is_some_and(|m| m["mediaType"] == MEDIA_TYPE_INDEX)
}

fn platform_json(p: &Platform) -> Value {
    let mut m = Map::new();
    m.insert("architecture".into(), json!(p.architecture));
    m.insert("os".into(), json!(p.os));
    if let Some(v) = &p.variant {
        m.insert("variant".into(), json!(v));
    }
    Value::Object(m)
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing a serde_json::Value")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_and_hex() {
        let d = Digest::sha256(b"");
        assert_eq!(d.hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Digest::parse(d.as_str()), Some(d.clone()));
        assert_eq!(Digest::parse("sha256:abc"), None);
        assert_eq!(Digest::parse(&d.as_str().to_uppercase()), None);
        assert_eq!(Digest::from_str_unchecked("sha256:abc").hex(), "abc");
    }

    fn read_index(layout: &OciLayoutBuilder) -> Value {
        let bytes = std::fs::read(layout.path().join("index.json")).expect("index.json");
        serde_json::from_slice(&bytes).expect("index JSON")
    }

    #[test]
    fn layout_files_and_config() {
        let tar = crate::LayerBuilder::new().file("a", "b").finish();
        let layer = Layer::new(tar.clone(), Compression::Gzip);
        let mut image = Image::new(vec![layer.clone()]).with_platform("linux", "arm64", Some("v8"));
        image.config.cmd = Some(vec!["sh".into()]);
        let mut layout = OciLayoutBuilder::new();
        let built = layout.add_image("t", &image);
        let config: Value = serde_json::from_slice(&built.config_json).expect("config JSON");
        assert_eq!(config["rootfs"]["diff_ids"][0], Digest::sha256(&tar).as_str());
        assert_eq!((config["architecture"].as_str(), config["variant"].as_str()), (Some("arm64"), Some("v8")));
        assert_eq!(config["config"]["Cmd"][0], "sh");
        let stored = std::fs::read(layout.blob_path(&built.layers[0].digest)).expect("layer blob");
        assert_eq!(stored, layer.blob());
        let index = read_index(&layout);
        assert_eq!(index["manifests"][0]["annotations"][ANNOTATION_REF_NAME], "t");
        assert_eq!(index["manifests"][0]["digest"], built.manifest.digest.as_str());
        assert!(layout.path().join("oci-layout").is_file());

        // Re-tagging replaces the entry; an odd media type is kept as declared.
        let odd = Image::new(vec![layer.with_media_type("application/x-odd")]);
        let built2 = layout.add_image("t", &odd);
        assert_eq!(built2.layers[0].media_type, "application/x-odd");
        let index = read_index(&layout);
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
        assert_eq!(index["manifests"][0]["digest"], built2.manifest.digest.as_str());
    }
}
