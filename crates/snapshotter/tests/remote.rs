//! The remote-layer seam against the real containerd (1.6, via the testkit's [`Containerd`]) and
//! `ctr-remote images rpull`, which labels each layer's Prepare as CRI does. A [`RemoteLayers`] made for
//! the test presents the bottom layer from a directory (its tar extracted there) and declines the other:
//! containerd must skip the download of the bottom layer (its blob never enters the content store),
//! download and unpack the declined one on top of the remote one, and run a container over both.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clip_snapshotter::{serve, LayerRequest, RemoteLayers, Snapshots, LABEL_REMOTE};
use clip_testkit::*;

/// Presents the layers it holds a directory for; records every request and release.
struct Extracted {
    dirs: HashMap<String, PathBuf>,
    asked: Mutex<Vec<LayerRequest>>,
    released: Mutex<Vec<PathBuf>>,
}

impl RemoteLayers for Extracted {
    fn prepare(&self, layer: &LayerRequest) -> Option<PathBuf> {
        self.asked.lock().unwrap().push(layer.clone());
        self.dirs.get(layer.layer_digest.as_deref()?).cloned()
    }

    fn release(&self, dir: &Path) {
        self.released.lock().unwrap().push(dir.to_path_buf());
    }
}

fn extract(tar: &[u8], dir: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut child =
        Command::new("tar").arg("-xpf").arg("-").arg("-C").arg(dir).stdin(Stdio::piped()).spawn().expect("running tar");
    child.stdin.take().unwrap().write_all(tar).unwrap();
    assert!(child.wait().unwrap().success(), "tar -x into {}", dir.display());
}

#[test]
fn a_layer_the_remote_presents_is_never_downloaded_and_the_rest_fall_back() {
    let mut programs = LayerBuilder::new();
    for e in host_programs(&[("/usr/bin/dash", "bin/sh", 0o755), ("/usr/bin/cat", "bin/cat", 0o755)]) {
        programs.entry(e);
    }
    let bottom = programs.finish();
    let mut top = LayerBuilder::new();
    top.dir("etc").file("etc/top", "unpacked by containerd\n");
    let image =
        Image::new(vec![Layer::new(bottom.clone(), Compression::Gzip), Layer::new(top.finish(), Compression::Gzip)]);
    let registry = Registry::start();
    let mut layout = OciLayoutBuilder::new();
    let built = layout.add_image("t", &image);
    registry.push(layout.path(), "t", "remote:t");
    let (bottom_digest, top_digest) = (built.layers[0].digest.to_string(), built.layers[1].digest.to_string());

    let dir = tempfile::tempdir().unwrap();
    let layer_dir = dir.path().join("layers/bottom");
    extract(&bottom, &layer_dir);
    std::fs::write(layer_dir.join("marker"), "served from the remote directory\n").unwrap();
    let remote = Arc::new(Extracted {
        dirs: HashMap::from([(bottom_digest.clone(), layer_dir.clone())]),
        asked: Mutex::new(Vec::new()),
        released: Mutex::new(Vec::new()),
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = dir.path().join("clip.sock");
    let snapshots = Snapshots::open(&dir.path().join("root"), remote.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn({
        let socket = socket.clone();
        async move {
            serve(snapshots, &socket, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(!server.is_finished(), "the snapshotter stopped before serving");
        assert!(Instant::now() < deadline, "the snapshotter did not serve within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }

    let containerd = Containerd::start(&[("clip", &socket)]);
    let image_ref = registry.image_ref("remote:t");
    containerd.ctr_remote_ok(&["images", "rpull", "--plain-http", "--snapshotter", "clip", &image_ref]);

    let asked = remote.asked.lock().unwrap().clone();
    let digests: Vec<_> = asked.iter().map(|l| l.layer_digest.clone().unwrap_or_default()).collect();
    assert_eq!(
        digests,
        [bottom_digest.clone(), top_digest.clone()],
        "each layer offered once, bottom first: {asked:?}"
    );
    assert!(asked.iter().all(|l| l.image_ref.as_deref() == Some(image_ref.as_str())), "{asked:?}");
    assert_eq!(asked[1].parent, asked[0].target, "the top layer is based on the remote snapshot");

    let content = containerd.ctr_ok(&["content", "ls", "-q"]);
    assert!(!content.contains(&bottom_digest), "the remote layer was downloaded:\n{content}");
    assert!(content.contains(&top_digest), "the declined layer is downloaded:\n{content}");
    let info = containerd.ctr_ok(&["snapshots", "--snapshotter", "clip", "info", &asked[0].target]);
    assert!(info.contains(LABEL_REMOTE), "the bottom snapshot is marked remote:\n{info}");

    let out = containerd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "clip",
        &image_ref,
        "c1",
        "/bin/sh",
        "-c",
        "cat /marker /etc/top",
    ]);
    assert_eq!(out, "served from the remote directory\nunpacked by containerd\n");

    // Removing the image lets containerd's garbage collector remove its snapshots: the remote layer's
    // directory is released once its snapshot is gone.
    containerd.ctr_ok(&["images", "rm", "--sync", &image_ref]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote.released.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the remote layer was not released within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(*remote.released.lock().unwrap(), [layer_dir]);

    drop(containerd);
    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
    assert!(!socket.exists(), "the socket is removed on shutdown");
}
