//! Test support: images built from bytes in code, OCI layouts written by hand, a real
//! `docker-registry` on 127.0.0.1 (killed on drop) and pushing with monolithic uploads.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clip_source::{media_types, Digest};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};

/// A blob with its descriptor fields.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub data: Vec<u8>,
    pub digest: Digest,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob { media_type: media_type.to_owned(), digest: Digest::of(&data), data }
    }

    pub fn descriptor_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.data.len()})
    }

    pub fn descriptor(&self) -> clip_source::Descriptor {
        clip_source::Descriptor::new(&self.media_type, self.digest, self.data.len() as u64)
    }
}

/// Deterministic bytes that differ at every offset modulo 251, so misplaced ranges show.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_add(seed)).collect()
}

/// A single-platform image: uncompressed-tar layers (any bytes do for a source), config, manifest.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
    pub os: String,
    pub arch: String,
}

impl TestImage {
    /// An OCI image for `arch` with the given layer contents.
    pub fn oci(arch: &str, layers: Vec<Vec<u8>>) -> TestImage {
        TestImage::build(arch, layers, false)
    }

    /// A Docker v2 schema 2 image (gzip layer media type; the bytes are not really gzip, which a
    /// source does not care about).
    pub fn docker(arch: &str, layers: Vec<Vec<u8>>) -> TestImage {
        TestImage::build(arch, layers, true)
    }

    /// An OCI image whose layers are gzip-compressed with the `gzip` tool.
    pub fn oci_gzip(arch: &str, layers: Vec<Vec<u8>>) -> TestImage {
        let layers = layers.iter().map(|l| gzip(l)).collect();
        TestImage::build_typed(arch, layers, false, media_types::OCI_LAYER_GZIP)
    }

    fn build(arch: &str, layers: Vec<Vec<u8>>, docker: bool) -> TestImage {
        let layer_type = if docker { media_types::DOCKER_LAYER_GZIP } else { media_types::OCI_LAYER_TAR };
        TestImage::build_typed(arch, layers, docker, layer_type)
    }

    fn build_typed(arch: &str, layers: Vec<Vec<u8>>, docker: bool, layer_type: &str) -> TestImage {
        let layers: Vec<Blob> = layers.into_iter().map(|l| Blob::new(layer_type, l)).collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin", "ARCH=".to_owned() + arch],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/work",
                "Labels": {"org.example.arch": arch},
                "ExposedPorts": {"8080/tcp": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_type = if docker { media_types::DOCKER_CONFIG } else { media_types::OCI_CONFIG };
        let config = Blob::new(config_type, serde_json::to_vec(&config).unwrap());
        let manifest_type = if docker { media_types::DOCKER_MANIFEST } else { media_types::OCI_MANIFEST };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor_json(),
            "layers": layers.iter().map(Blob::descriptor_json).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(manifest_type, serde_json::to_vec_pretty(&manifest).unwrap());
        TestImage { layers, config, manifest, os: "linux".into(), arch: arch.into() }
    }

    pub fn blobs(&self) -> Vec<&Blob> {
        let mut blobs: Vec<&Blob> = self.layers.iter().collect();
        blobs.push(&self.config);
        blobs
    }

    /// This image's entry in an index, with its platform.
    pub fn index_entry(&self) -> Value {
        let mut entry = self.manifest.descriptor_json();
        entry["platform"] = json!({"os": self.os, "architecture": self.arch});
        entry
    }
}

/// `data` compressed by `gzip -n`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip must be installed");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// An index (OCI or Docker manifest list) over images, with platforms.
pub fn index(images: &[&TestImage], docker: bool) -> Blob {
    let media_type = if docker { media_types::DOCKER_MANIFEST_LIST } else { media_types::OCI_INDEX };
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": images.iter().map(|i| i.index_entry()).collect::<Vec<_>>(),
    });
    Blob::new(media_type, serde_json::to_vec(&index).unwrap())
}

/// Writes an OCI layout: `oci-layout`, blobs, and index.json with the given entries.
pub fn write_layout(dir: &Path, blobs: &[&Blob], entries: Vec<Value>) {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for blob in blobs {
        std::fs::write(blob_dir.join(blob.digest.hex()), &blob.data).unwrap();
    }
    let index = json!({"schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": entries});
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

/// An index.json entry for a manifest or index blob, tagged `tag`.
pub fn tagged(blob: &Blob, tag: Option<&str>) -> Value {
    let mut entry = blob.descriptor_json();
    if let Some(tag) = tag {
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    }
    entry
}

/// A `docker-registry` (CNCF distribution) serving plain HTTP on 127.0.0.1, killed on drop.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: tempfile::TempDir,
}

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

impl TestRegistry {
    /// Starts an open registry. Panics (fails the test) if it cannot start.
    pub fn start() -> TestRegistry {
        TestRegistry::start_inner(None)
    }

    /// Starts a registry that requires basic auth as `user`/`password`.
    pub fn start_with_user(user: &str, password: &str) -> TestRegistry {
        let hash = bcrypt::hash(password, 4).unwrap();
        TestRegistry::start_inner(Some(format!("{user}:{hash}\n")))
    }

    fn start_inner(htpasswd: Option<String>) -> TestRegistry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} is missing (apt-get install docker-registry)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: test-secret\n",
            dir.path().join("data").display()
        );
        if let Some(htpasswd) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, htpasswd).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: clip-test\n    path: {}\n", path.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let stderr = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        let mut registry = TestRegistry { child, addr, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status} before serving:\n{}", self.log());
            }
            if let Ok(mut conn) = TcpStream::connect(&self.addr) {
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut answer = String::new();
                if conn.write_all(request.as_bytes()).is_ok()
                    && conn.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 20s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// An oci-client pushing with monolithic uploads over plain HTTP.
    pub fn pusher(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            use_monolithic_push: true,
            ..ClientConfig::default()
        })
    }

    /// Pushes an image's blobs and manifest as `repo:tag` (or only by digest when `tag` is None).
    pub async fn push_image(&self, auth: &RegistryAuth, repo: &str, tag: Option<&str>, image: &TestImage) {
        self.push_blobs(auth, repo, &image.blobs()).await;
        self.push_manifest(auth, repo, tag, &image.manifest).await;
    }

    pub async fn push_blobs(&self, auth: &RegistryAuth, repo: &str, blobs: &[&Blob]) {
        let client = self.pusher();
        let reference = Reference::with_tag(self.addr.clone(), repo.to_owned(), "latest".into());
        client.auth(&reference, auth, oci_client::RegistryOperation::Push).await.unwrap();
        for blob in blobs {
            client
                .push_blob(&reference, blob.data.clone(), &blob.digest.to_string())
                .await
                .unwrap_or_else(|e| panic!("pushing blob {}: {e}\n{}", blob.digest, self.log()));
        }
    }

    /// Pushes a manifest or index under `tag`, or under its digest.
    pub async fn push_manifest(&self, auth: &RegistryAuth, repo: &str, tag: Option<&str>, manifest: &Blob) {
        let client = self.pusher();
        let reference = match tag {
            Some(tag) => Reference::with_tag(self.addr.clone(), repo.to_owned(), tag.to_owned()),
            None => Reference::with_digest(self.addr.clone(), repo.to_owned(), manifest.digest.to_string()),
        };
        client.auth(&reference, auth, oci_client::RegistryOperation::Push).await.unwrap();
        client
            .push_manifest_raw(
                &reference,
                manifest.data.clone(),
                http::HeaderValue::from_str(&manifest.media_type).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("pushing manifest {}: {e}\n{}", manifest.digest, self.log()));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A docker config dir with one `auths` entry.
pub fn docker_config_with(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    let config = json!({"auths": {registry: {"auth": auth}}});
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}
