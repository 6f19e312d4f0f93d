//! What a snapshot looks like on disk and to the kernel, as containerd's overlayfs snapshotter lays it
//! out: `ROOT/snapshots/<id>/fs` holds a snapshot's own files (`work` beside it for an active one);
//! mounts are a bind mount of `fs` without parents, else an overlay whose lowerdirs are the parents' dirs,
//! nearest first. Also the disk usage of a directory, counted as containerd counts it.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount;

use crate::error::Error;
use crate::meta::{DiskUsage, Kind, Record};

/// Paths under the snapshotter's root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
    /// The kernel's overlay takes `index=off` (containerd sets it whenever it can: no inode index is
    /// kept across mounts of shared lower dirs).
    index_off: bool,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        Layout { root: root.to_path_buf(), index_off }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/snapshots`: one directory per snapshot id.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `ROOT/metadata.redb`.
    pub fn metadata(&self) -> PathBuf {
        self.root.join("metadata.redb")
    }

    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// Where the snapshot's own files are: its `fs` directory, or a remote layer's directory.
    pub fn layer_dir(&self, rec: &Record) -> PathBuf {
        rec.remote.clone().unwrap_or_else(|| self.snapshot_dir(rec.id).join("fs"))
    }

    fn work_dir(&self, rec: &Record) -> PathBuf {
        self.snapshot_dir(rec.id).join("work")
    }

    /// The mounts of an active snapshot or view `rec` whose parents are `chain` (nearest first).
    pub fn mounts(&self, rec: &Record, chain: &[Record]) -> Vec<Mount> {
        let read_only = rec.kind == Kind::View;
        let bind = |dir: PathBuf, ro: bool| Mount {
            r#type: "bind".to_owned(),
            source: dir.display().to_string(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.to_owned(), "rbind".to_owned()],
        };
        match chain {
            // overlayfs needs a lower dir: a snapshot without parents is its own directory.
            [] => return vec![bind(self.layer_dir(rec), read_only)],
            // A view of one layer is that layer, read-only.
            [parent] if read_only => return vec![bind(self.layer_dir(parent), true)],
            _ => {}
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_owned());
        }
        if !read_only {
            options.push(format!("workdir={}", self.work_dir(rec).display()));
            options.push(format!("upperdir={}", self.layer_dir(rec).display()));
        }
        let lower: Vec<String> = chain.iter().map(|p| self.layer_dir(p).display().to_string()).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount { r#type: "overlay".to_owned(), source: "overlay".to_owned(), target: String::new(), options }]
    }
}

/// The disk usage of the tree at `dir`: every inode once (hard links count once), size in allocated
/// 512-byte blocks, as containerd's `fs.DiskUsage`. Symlinks are not followed.
pub fn disk_usage(dir: &Path) -> Result<DiskUsage, Error> {
    let mut seen = HashSet::new();
    let mut usage = DiskUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(Error::io(&path))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks() * 512).unwrap_or(i64::MAX);
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(Error::io(&path))? {
                stack.push(entry.map_err(Error::io(&path))?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Time;

    fn rec(id: u64, kind: Kind) -> Record {
        Record {
            id,
            kind,
            parent: String::new(),
            labels: Default::default(),
            created: Time::now(),
            updated: Time::now(),
            usage: DiskUsage::default(),
            remote: None,
        }
    }

    fn layout() -> Layout {
        Layout { root: PathBuf::from("/r"), index_off: true }
    }

    #[test]
    fn mounts_follow_containerds_overlayfs_snapshotter() {
        let l = layout();
        let base = vec![rec(1, Kind::Committed)];
        let two = vec![rec(2, Kind::Committed), rec(1, Kind::Committed)];

        let m = l.mounts(&rec(3, Kind::Active), &[]);
        assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("bind", "/r/snapshots/3/fs"));
        assert_eq!(m[0].options, ["rw", "rbind"]);
        assert_eq!(l.mounts(&rec(3, Kind::View), &[])[0].options, ["ro", "rbind"]);

        let m = l.mounts(&rec(3, Kind::View), &base);
        assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("bind", "/r/snapshots/1/fs"));
        assert_eq!(m[0].options, ["ro", "rbind"]);

        let m = l.mounts(&rec(3, Kind::Active), &two);
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/snapshots/3/work",
                "upperdir=/r/snapshots/3/fs",
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"
            ]
        );
        assert_eq!(
            l.mounts(&rec(3, Kind::View), &two)[0].options,
            ["index=off", "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]
        );
    }

    #[test]
    fn a_remote_parent_is_its_layer_directory() {
        let mut remote = rec(2, Kind::Committed);
        remote.remote = Some(PathBuf::from("/lazy/layers/1-sha256-ab"));
        let m = layout().mounts(&rec(3, Kind::Active), &[remote, rec(1, Kind::Committed)]);
        assert!(m[0].options.contains(&"lowerdir=/lazy/layers/1-sha256-ab:/r/snapshots/1/fs".to_owned()));
    }

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let u = disk_usage(dir.path()).unwrap();
        assert_eq!(u.inodes, 3, "root, d and one inode for a/b");
        assert!(u.size >= 10_000, "{u:?}");
    }
}
