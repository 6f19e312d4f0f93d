//! [`Snapshots`] on a real filesystem, with its mounts done by the kernel: the answers containerd's
//! overlayfs snapshotter gives (and the gRPC codes containerd turns back into its error kinds), labels,
//! usage, walk filters, cleanup, and everything still there after reopening the root.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use clip_snapshotter::{Error, Kind, LayerRequest, Mount, NoRemoteLayers, RemoteLayers, Snapshots, LABEL_TARGET};
use containerd_snapshots::tonic::Code;

fn open(root: &Path) -> Snapshots {
    Snapshots::open(root, Arc::new(NoRemoteLayers)).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Mounts `mounts` (as containerd would) at `target`, runs `f`, unmounts.
fn with_mounted(mounts: &[Mount], target: &Path, f: impl FnOnce(&Path)) {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    std::fs::create_dir_all(target).unwrap();
    let mut cmd = Command::new("mount");
    match m.r#type.as_str() {
        "bind" => cmd.arg("--bind").arg(&m.source).arg(target),
        t => cmd.args(["-t", t, "-o", &m.options.join(","), &m.source]).arg(target),
    };
    assert!(cmd.status().unwrap().success(), "mount {m:?}");
    if m.options.iter().any(|o| o == "ro") {
        let remount = Command::new("mount").args(["-o", "remount,bind,ro"]).arg(target).status().unwrap();
        assert!(remount.success());
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(target)));
    assert!(Command::new("umount").arg(target).status().unwrap().success());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    r.expect_err("an error").code()
}

#[test]
fn layers_stack_as_overlayfs_and_errors_are_containerds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = open(&root);
    let mnt = dir.path().join("mnt");

    // A base layer: a bind mount of its own directory, written, committed.
    let m = s.prepare("extract-1", "", labels(&[("l", "1")])).unwrap();
    with_mounted(&m, &mnt, |d| std::fs::write(d.join("base"), "base\n").unwrap());
    assert_eq!(s.stat("extract-1").unwrap().kind, Kind::Active);
    assert!(s.usage("extract-1").unwrap().inodes >= 2);
    s.commit("layer-1", "extract-1", labels(&[("committed", "yes")])).unwrap();
    assert_eq!(code(s.stat("extract-1")), Code::NotFound, "the active key is gone after commit");
    let info = s.stat("layer-1").unwrap();
    assert_eq!((info.kind, info.labels), (Kind::Committed, labels(&[("committed", "yes")])));

    // A second layer over it: overlay, upper and work of its own.
    let m = s.prepare("extract-2", "layer-1", HashMap::new()).unwrap();
    assert_eq!(m[0].r#type, "overlay");
    with_mounted(&m, &mnt, |d| {
        assert_eq!(std::fs::read_to_string(d.join("base")).unwrap(), "base\n");
        std::fs::write(d.join("top"), "top\n").unwrap();
    });
    s.commit("layer-2", "extract-2", HashMap::new()).unwrap();

    // A view of the two: read-only overlay of both.
    let m = s.view("view", "layer-2", HashMap::new()).unwrap();
    assert!(m[0].options.iter().all(|o| !o.starts_with("upperdir=")), "{m:?}");
    with_mounted(&m, &mnt, |d| {
        assert_eq!(std::fs::read_to_string(d.join("top")).unwrap(), "top\n");
        assert!(std::fs::write(d.join("x"), "x").is_err(), "a view is read-only");
    });
    assert_eq!(s.mounts("view").unwrap(), m, "Mounts answers what View did");

    // containerd's error kinds.
    assert_eq!(code(s.prepare("extract-2b", "missing", HashMap::new())), Code::NotFound);
    assert_eq!(code(s.prepare("view", "layer-2", HashMap::new())), Code::AlreadyExists);
    assert_eq!(code(s.prepare("c", "view", HashMap::new())), Code::InvalidArgument, "a view is no parent");
    assert_eq!(code(s.commit("layer-3", "view", HashMap::new())), Code::FailedPrecondition, "a view is not active");
    assert_eq!(code(s.commit("layer-1", "view", HashMap::new())), Code::FailedPrecondition);
    assert_eq!(code(s.mounts("layer-1")), Code::FailedPrecondition, "a committed snapshot has no mounts");
    assert_eq!(code(s.remove("layer-1")), Code::FailedPrecondition, "layer-2 is based on it");
    assert_eq!(code(s.remove("nothing")), Code::NotFound);
    assert_eq!(code(s.prepare("", "", HashMap::new())), Code::InvalidArgument);

    // An active snapshot whose name a layer is committed under already: AlreadyExists, and it stays.
    s.prepare("extract-again", "layer-1", HashMap::new()).unwrap();
    assert_eq!(code(s.commit("layer-2", "extract-again", HashMap::new())), Code::AlreadyExists);
    assert_eq!(s.stat("extract-again").unwrap().kind, Kind::Active);
    s.remove("extract-again").unwrap();
    let ids_dir = root.join("snapshots");
    let dirs = || std::fs::read_dir(&ids_dir).unwrap().count();
    assert_eq!(dirs(), 3, "layer-1, layer-2, view: a removed snapshot's directory goes with it");

    // Walk with containerd's filters.
    let names = |filters: &[&str]| -> Vec<String> {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        s.walk(&f).unwrap().into_iter().map(|i| i.name).collect()
    };
    assert_eq!(names(&[]), ["layer-1", "layer-2", "view"]);
    assert_eq!(names(&["kind==committed"]), ["layer-1", "layer-2"]);
    assert_eq!(names(&[r#"parent=="layer-1""#]), ["layer-2"]);
    assert_eq!(names(&["labels.committed==yes", "kind==view"]), ["layer-1", "view"]);
    assert_eq!(code(s.walk(&["name~=x".to_owned()])), Code::InvalidArgument);

    // Cleanup removes what no snapshot owns (a crash between directory and metadata), nothing else.
    std::fs::create_dir_all(ids_dir.join("new-crashed/fs")).unwrap();
    std::fs::create_dir_all(ids_dir.join("999/fs")).unwrap();
    s.cleanup().unwrap();
    assert_eq!(dirs(), 3);

    // Everything is still there after reopening the root (a restart).
    drop(s);
    let s = open(&root);
    let after: Vec<String> = s.walk(&[]).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(after, ["layer-1", "layer-2", "view"]);
    assert_eq!(s.stat("layer-1").unwrap().labels, labels(&[("committed", "yes")]));
    let m = s.prepare("container", "layer-2", HashMap::new()).unwrap();
    with_mounted(&m, &mnt, |d| assert_eq!(std::fs::read_to_string(d.join("base")).unwrap(), "base\n"));
}

#[test]
fn update_changes_labels_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("root"));
    s.prepare("a", "", labels(&[("x", "1"), ("y", "2")])).unwrap();
    let created = s.stat("a").unwrap().created_at;

    let i = s.update("a", labels(&[("y", "3"), ("z", "4")]), &["labels.y".to_owned(), "labels.x".to_owned()]).unwrap();
    assert_eq!(i.labels, labels(&[("y", "3")]), "labels.x absent from the update removes it; z is not asked for");
    let i = s.update("a", labels(&[("k", "v"), ("gone", "")]), &[]).unwrap();
    assert_eq!(i.labels, labels(&[("k", "v")]), "no field paths: all labels replaced, empty values dropped");
    assert_eq!(i.created_at, created);
    assert!(i.updated_at >= created);
    assert_eq!(s.stat("a").unwrap().labels, labels(&[("k", "v")]));

    assert_eq!(code(s.update("a", HashMap::new(), &["parent".to_owned()])), Code::InvalidArgument);
    assert_eq!(code(s.update("none", HashMap::new(), &[])), Code::NotFound);
}

/// Presents every layer from one directory; records what it is told.
#[derive(Default)]
struct OneDir {
    dir: std::path::PathBuf,
    committed: std::sync::Mutex<Vec<String>>,
    released: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

impl RemoteLayers for OneDir {
    fn prepare(&self, _layer: &LayerRequest) -> Option<std::path::PathBuf> {
        Some(self.dir.clone())
    }

    fn committed(&self, layer: &LayerRequest, _dir: &Path) {
        self.committed.lock().unwrap().push(layer.target.clone());
    }

    fn release(&self, dir: &Path) {
        self.released.lock().unwrap().push(dir.to_path_buf());
    }
}

#[test]
fn a_remote_layer_whose_commit_fails_is_released_unless_another_snapshot_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(OneDir { dir: dir.path().join("layer"), ..OneDir::default() });
    let s = Snapshots::open(&dir.path().join("root"), remote.clone()).unwrap();
    let layer = |target: &str| labels(&[(LABEL_TARGET, target)]);

    // The parent is not there: the commit fails after the remote layer was made ready, so it is released.
    assert_eq!(code(s.prepare("extract-1", "missing", layer("chain-1"))), Code::NotFound);
    assert_eq!(*remote.released.lock().unwrap(), std::slice::from_ref(&remote.dir));
    assert!(remote.committed.lock().unwrap().is_empty());
    assert!(s.walk(&[]).unwrap().is_empty(), "nothing was committed");

    // Committed: the answer is AlreadyExists (containerd skips the layer), and the remote layer is told.
    assert_eq!(code(s.prepare("extract-2", "", layer("chain-2"))), Code::AlreadyExists);
    assert_eq!(*remote.committed.lock().unwrap(), ["chain-2"]);

    // A failed commit of a layer served from a directory chain-2 uses: that directory stays.
    assert_eq!(code(s.prepare("extract-3", "missing", layer("chain-3"))), Code::NotFound);
    assert_eq!(remote.released.lock().unwrap().len(), 1, "chain-2 still uses the directory");

    // Removing chain-2 releases it.
    s.remove("chain-2").unwrap();
    assert_eq!(remote.released.lock().unwrap().len(), 2);
}
