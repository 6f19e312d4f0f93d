//! [`Snapshots`]: the snapshot operations of containerd's snapshots API with the semantics of containerd's
//! overlayfs snapshotter, over the metadata database ([`crate::meta`]) and the directories of
//! [`crate::mounts::Layout`]. Blocking: the gRPC service runs each call on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Usage};
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::filter::{Fields, Filters};
use crate::meta::{DiskUsage, Kind, MetaStore, Record, Time};
use crate::mounts::{disk_usage, Layout};
use crate::remote::{LayerRequest, RemoteLayers, LABEL_REMOTE, LABEL_TARGET};

/// The snapshots under one root directory.
pub struct Snapshots {
    layout: Layout,
    meta: MetaStore,
    remote: Arc<dyn RemoteLayers>,
}

impl Snapshots {
    /// Opens (creating) the snapshotter's state at `root` (made 0700: it holds every image's files):
    /// `metadata.redb` and `snapshots/`. Layers that [`RemoteLayers::prepare`] presents are committed as
    /// remote snapshots.
    pub fn open(root: &Path, remote: Arc<dyn RemoteLayers>) -> Result<Snapshots, Error> {
        let layout = Layout::new(root);
        if let Some(was) = clip_store::private_dir(root).map_err(Error::io(root))? {
            warn!(root = %root.display(), mode = format!("{was:o}"), "the snapshotter root was open to other users: made it 0700");
        }
        let dir = layout.snapshots_dir();
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir).map_err(Error::io(&dir))?;
        let meta = MetaStore::open(&layout.metadata())?;
        let mut dirs: Vec<PathBuf> = meta.read(|t| t.all())?.into_iter().filter_map(|(_, rec)| rec.remote).collect();
        dirs.sort();
        dirs.dedup();
        if !dirs.is_empty() {
            remote.resume(&dirs);
        }
        Ok(Snapshots { layout, meta, remote })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The info of the snapshot with this key or name.
    pub fn stat(&self, key: &str) -> Result<Info, Error> {
        self.meta.read(|t| t.require(key)).map(|rec| info(key, rec))
    }

    /// Changes a snapshot's labels: all of them (`fieldpaths` empty, or `labels`), or the ones named
    /// `labels.KEY`. A label set to the empty string is removed. Other fields cannot change.
    pub fn update(&self, name: &str, labels: HashMap<String, String>, fieldpaths: &[String]) -> Result<Info, Error> {
        self.meta.write(|t| {
            let mut rec = t.tables().require(name)?;
            if fieldpaths.is_empty() {
                rec.labels = labels.clone().into_iter().collect();
            }
            for path in fieldpaths {
                if path == "labels" {
                    rec.labels = labels.clone().into_iter().collect();
                } else if let Some(key) = path.strip_prefix("labels.") {
                    match labels.get(key) {
                        Some(v) => rec.labels.insert(key.to_owned(), v.clone()),
                        None => rec.labels.remove(key),
                    };
                } else {
                    return Err(Error::Immutable { key: name.to_owned(), field: path.clone() });
                }
            }
            rec.labels.retain(|_, v| !v.is_empty());
            rec.updated = Time::now();
            t.put(name, &rec)?;
            Ok(info(name, rec))
        })
    }

    /// The space and inodes a snapshot's own files take: measured now for an active snapshot, as
    /// recorded at commit otherwise.
    pub fn usage(&self, key: &str) -> Result<Usage, Error> {
        let rec = self.meta.read(|t| t.require(key))?;
        let u = match rec.kind {
            Kind::Active => disk_usage(&self.layout.layer_dir(&rec))?,
            Kind::View | Kind::Committed => rec.usage,
        };
        Ok(Usage { size: u.size, inodes: u.inodes })
    }

    /// The mounts of an active snapshot or a view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        let (rec, chain) = self.meta.read(|t| {
            let rec = t.require(key)?;
            let chain = t.chain(key, &rec.parent)?;
            Ok((rec, chain))
        })?;
        if rec.kind == Kind::Committed {
            return Err(Error::NotMountable { key: key.to_owned() });
        }
        Ok(self.layout.mounts(&rec, &chain))
    }

    /// A new active (writable) snapshot `key` on top of the committed `parent` (empty for none).
    ///
    /// With the labels of a layer containerd may skip ([`LayerRequest`]), the layer is offered to the
    /// [`RemoteLayers`] first: when it presents the layer, or the layer's snapshot exists already, the
    /// answer is [`Error::AlreadyExists`] and nothing is created under `key`.
    pub fn prepare(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        if let Some(layer) = LayerRequest::from_labels(parent, &labels) {
            if self.has_layer(&layer)? {
                debug!(target = %layer.target, "layer snapshot exists already");
                return Err(Error::AlreadyExists { key: layer.target });
            }
            if let Some(dir) = self.remote.prepare(&layer) {
                if let Err(e) = self.commit_remote(&layer, &dir) {
                    // The remote layer was made ready for nothing: unless another snapshot serves from
                    // it, whatever serves it goes (an image's mount must not outlive its snapshots).
                    self.release_unused(&dir);
                    return Err(e);
                }
                self.remote.committed(&layer, &dir);
                return Err(Error::AlreadyExists { key: layer.target });
            }
            debug!(target = %layer.target, digest = ?layer.layer_digest, "layer not remote: containerd unpacks it");
        }
        self.create(Kind::Active, key, parent, labels)
    }

    /// A new read-only view `key` of the committed `parent`.
    pub fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        self.create(Kind::View, key, parent, labels)
    }

    /// Commits the active snapshot `key` as `name` (with `labels`, which replace its own); `key` is gone
    /// afterwards. Its disk usage is measured and kept.
    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::EmptyKey);
        }
        self.meta.write(|t| {
            let active = t.tables().require(key)?;
            if active.kind != Kind::Active {
                return Err(Error::NotActive { key: key.to_owned() });
            }
            if t.tables().get(name)?.is_some() {
                return Err(Error::AlreadyExists { key: name.to_owned() });
            }
            let usage = disk_usage(&self.layout.layer_dir(&active))?;
            let now = Time::now();
            let labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let committed = Record { kind: Kind::Committed, labels, created: now, updated: now, usage, ..active };
            t.delete(key)?;
            t.put(name, &committed)
        })?;
        info!(%name, %key, "committed");
        Ok(())
    }

    /// Removes a snapshot that no other is based on, and its directory.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        let (rec, shared) = self.meta.write(|t| {
            let rec = t.tables().require(key)?;
            let all = t.tables().all()?;
            if all.iter().any(|(_, r)| r.parent == key) {
                return Err(Error::HasChildren { key: key.to_owned() });
            }
            // One layer directory may serve several snapshots (one layer under different parents).
            let shared = all.iter().any(|(k, r)| k != key && rec.remote.is_some() && r.remote == rec.remote);
            t.delete(key)?;
            Ok((rec, shared))
        })?;
        // The record is gone; a directory left behind is removed by the next cleanup.
        match &rec.remote {
            Some(_) if shared => {}
            Some(dir) => self.remote.release(dir),
            None => {
                let dir = self.layout.snapshot_dir(rec.id);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    warn!(dir = %dir.display(), error = %e, "cannot remove a snapshot directory (cleanup retries)");
                }
            }
        }
        debug!(%key, "removed");
        Ok(())
    }

    /// The infos of the snapshots that pass `filters` (containerd's filter syntax, see
    /// [`crate::filter`]), in key order.
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filters = Filters::parse(filters)?;
        let all = self.meta.read(|t| t.all())?;
        Ok(all
            .into_iter()
            .filter(|(name, r)| filters.matches(&Fields { name, parent: &r.parent, kind: r.kind, labels: &r.labels }))
            .map(|(name, r)| info(&name, r))
            .collect())
    }

    /// Removes the directories under `snapshots/` that no snapshot owns (left by a crash or a failed
    /// removal).
    pub fn cleanup(&self) -> Result<(), Error> {
        let dir = self.layout.snapshots_dir();
        // Under the write lock, so no snapshot is being created meanwhile.
        let orphans = self.meta.write(|t| {
            let ids: Vec<String> = t.tables().all()?.iter().map(|(_, r)| r.id.to_string()).collect();
            let mut orphans = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
                let entry = entry.map_err(Error::io(&dir))?;
                if !ids.iter().any(|id| entry.file_name().to_str() == Some(id)) {
                    orphans.push(entry.path());
                }
            }
            Ok(orphans)
        })?;
        for path in orphans {
            info!(dir = %path.display(), "cleanup: removing a directory no snapshot owns");
            std::fs::remove_dir_all(&path).map_err(Error::io(&path))?;
        }
        Ok(())
    }

    /// Whether the layer's snapshot exists: committed under its target name, on the same parent.
    fn has_layer(&self, layer: &LayerRequest) -> Result<bool, Error> {
        let existing = self.meta.read(|t| t.get(&layer.target))?;
        Ok(existing.is_some_and(|r| r.kind == Kind::Committed && r.parent == layer.parent))
    }

    /// Releases the remote layer directory `dir` unless a snapshot serves from it (a failed commit of a
    /// layer another snapshot also uses leaves it in place).
    fn release_unused(&self, dir: &Path) {
        match self.meta.read(|t| t.all()) {
            Ok(all) if all.iter().any(|(_, r)| r.remote.as_deref() == Some(dir)) => {}
            Ok(_) => self.remote.release(dir),
            Err(error) => {
                warn!(dir = %dir.display(), error = %clip_store::error_chain(&error), "cannot tell whether a remote layer is in use: kept")
            }
        }
    }

    /// Commits the layer as a remote snapshot named by its target, served from `dir`.
    fn commit_remote(&self, layer: &LayerRequest, dir: &Path) -> Result<(), Error> {
        self.meta.write(|t| {
            if t.tables().get(&layer.target)?.is_some() {
                return Err(Error::AlreadyExists { key: layer.target.clone() });
            }
            check_parent(t.tables(), &layer.parent)?;
            let mut labels: BTreeMap<String, String> = layer.labels.clone().into_iter().collect();
            labels.insert(LABEL_REMOTE.to_owned(), "clip".to_owned());
            labels.insert(LABEL_TARGET.to_owned(), layer.target.clone());
            let now = Time::now();
            let rec = Record {
                id: t.next_id()?,
                kind: Kind::Committed,
                parent: layer.parent.clone(),
                labels,
                created: now,
                updated: now,
                usage: DiskUsage::default(),
                remote: Some(dir.to_path_buf()),
            };
            t.put(&layer.target, &rec)
        })?;
        info!(target = %layer.target, dir = %dir.display(), "committed a remote layer");
        Ok(())
    }

    /// Creates an active snapshot or a view: its directory (`fs`, and `work` for an active one) made
    /// beside the others under a temporary name and renamed to its id inside the metadata transaction.
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let snapshots = self.layout.snapshots_dir();
        let mut placed = None;
        let result = self.meta.write(|t| {
            if t.tables().get(key)?.is_some() {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            let chain = check_parent(t.tables(), parent)?;
            let tmp = tempfile::Builder::new().prefix("new-").tempdir_in(&snapshots).map_err(Error::io(&snapshots))?;
            let fs = tmp.path().join("fs");
            std::fs::DirBuilder::new().mode(0o755).create(&fs).map_err(Error::io(&fs))?;
            if kind == Kind::Active {
                let work = tmp.path().join("work");
                std::fs::DirBuilder::new().mode(0o711).create(&work).map_err(Error::io(&work))?;
            }
            if let Some(nearest) = chain.first() {
                // The new upper directory belongs to whom the layer below's root belongs.
                let below = self.layout.layer_dir(nearest);
                let meta = std::fs::metadata(&below).map_err(Error::io(&below))?;
                std::os::unix::fs::lchown(&fs, Some(meta.uid()), Some(meta.gid())).map_err(Error::io(&fs))?;
            }
            let now = Time::now();
            let labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let rec = Record {
                id: t.next_id()?,
                kind,
                parent: parent.to_owned(),
                labels,
                created: now,
                updated: now,
                usage: DiskUsage::default(),
                remote: None,
            };
            t.put(key, &rec)?;
            let path = self.layout.snapshot_dir(rec.id);
            std::fs::rename(tmp.path(), &path).map_err(Error::io(&path))?;
            let _ = tmp.keep();
            placed = Some(path);
            Ok(self.layout.mounts(&rec, &chain))
        });
        if result.is_err() {
            // The transaction rolled back: its directory must go too.
            if let Some(path) = placed {
                let _ = std::fs::remove_dir_all(path);
            }
        } else {
            debug!(%key, %parent, kind = kind.name(), "created");
        }
        result
    }
}

/// The chain of a new snapshot's parent (nearest first): the parent must exist and be committed.
fn check_parent<T>(t: &crate::meta::Tables<T>, parent: &str) -> Result<Vec<Record>, Error>
where
    T: redb::ReadableTable<&'static str, &'static [u8]>,
{
    if parent.is_empty() {
        return Ok(Vec::new());
    }
    let rec = t.require(parent)?;
    if rec.kind != Kind::Committed {
        return Err(Error::ParentNotCommitted { parent: parent.to_owned() });
    }
    t.chain(parent, parent)
}

fn info(name: &str, rec: Record) -> Info {
    Info {
        kind: match rec.kind {
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        },
        name: name.to_owned(),
        parent: rec.parent,
        labels: rec.labels.into_iter().collect(),
        created_at: rec.created.system_time(),
        updated_at: rec.updated.system_time(),
    }
}
