//! Snapshot metadata in `ROOT/metadata.redb`, an embedded database (redb: ACID transactions, crash
//! safe), as containerd's own snapshotters keep theirs in bolt. One table maps a snapshot's key (or, once
//! committed, its name) to its [`Record`] (JSON); a counter hands out the ids that name the snapshot
//! directories. Every change runs in one write transaction: committed whole or not at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::Error;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";
/// More parents than overlayfs could ever stack: a chain this long is a loop in a damaged database.
const MAX_CHAIN: usize = 4096;

/// A snapshot's kind, as containerd's snapshots API has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View,
    /// A writable snapshot, to be committed or removed.
    Active,
    /// An immutable snapshot that others can be based on.
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==committed`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time as stored: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    secs: u64,
    nanos: u32,
}

impl Time {
    pub fn now() -> Time {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Time { secs: d.as_secs(), nanos: d.subsec_nanos() }
    }

    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::new(self.secs, self.nanos)
    }
}

/// Disk space and inodes of a snapshot's own directory (the layer's files, not its parents').
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub size: i64,
    pub inodes: i64,
}

/// One snapshot's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names the snapshot's directory `ROOT/snapshots/<id>`; kept when an active snapshot is committed.
    pub id: u64,
    pub kind: Kind,
    /// The parent's name; empty for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: Time,
    pub updated: Time,
    /// Of a committed snapshot, measured at commit.
    pub usage: DiskUsage,
    /// For a remote snapshot, the directory holding the layer's tree (instead of `snapshots/<id>/fs`).
    pub remote: Option<PathBuf>,
}

/// The metadata database.
#[derive(Debug)]
pub struct MetaStore {
    db: redb::Database,
    path: PathBuf,
}

/// The snapshots table inside one transaction (read or write).
pub struct Tables<T> {
    snapshots: T,
    path: PathBuf,
}

/// The tables of a write transaction.
pub struct WriteTables<'t> {
    tables: Tables<redb::Table<'t, &'static str, &'static [u8]>>,
    counters: redb::Table<'t, &'static str, u64>,
}

impl MetaStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<MetaStore, Error> {
        let db = redb::Database::create(path).map_err(|e| db(path, e))?;
        let store = MetaStore { db, path: path.to_path_buf() };
        // Tables exist from the start, so read transactions never meet a missing one.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    /// Runs `f` in a write transaction, committed when `f` succeeds and dropped (rolled back) when it fails.
    /// Write transactions run one at a time.
    pub fn write<R>(&self, f: impl FnOnce(&mut WriteTables<'_>) -> Result<R, Error>) -> Result<R, Error> {
        let err = |e: redb::Error| db(&self.path, e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let out = {
            let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
            let counters = txn.open_table(COUNTERS).map_err(|e| err(e.into()))?;
            let mut tables = WriteTables { tables: Tables { snapshots, path: self.path.clone() }, counters };
            f(&mut tables)?
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(out)
    }

    /// Runs `f` on a consistent snapshot of the database.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&Tables<redb::ReadOnlyTable<&'static str, &'static [u8]>>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let txn = self.db.begin_read().map_err(|e| db(&self.path, e))?;
        let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| db(&self.path, e))?;
        f(&Tables { snapshots, path: self.path.clone() })
    }
}

impl<T: ReadableTable<&'static str, &'static [u8]>> Tables<T> {
    /// The record of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Record>, Error> {
        match self.snapshots.get(key).map_err(|e| db(&self.path, e))? {
            Some(value) => decode(key, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The record of `key`, or [`Error::NotFound`].
    pub fn require(&self, key: &str) -> Result<Record, Error> {
        self.get(key)?.ok_or_else(|| Error::NotFound { key: key.to_owned() })
    }

    /// Every snapshot, in key order.
    pub fn all(&self) -> Result<Vec<(String, Record)>, Error> {
        let mut out = Vec::new();
        for entry in self.snapshots.iter().map_err(|e| db(&self.path, e))? {
            let (k, v) = entry.map_err(|e| db(&self.path, e))?;
            out.push((k.value().to_owned(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// The records of `parent` and its ancestors, nearest first (empty for no parent).
    pub fn chain(&self, key: &str, parent: &str) -> Result<Vec<Record>, Error> {
        let mut out: Vec<Record> = Vec::new();
        let mut next = parent.to_owned();
        while !next.is_empty() {
            let broken = || Error::BrokenChain { key: key.to_owned(), missing: next.clone() };
            let rec = self.get(&next)?.ok_or_else(broken)?;
            if out.len() >= MAX_CHAIN || out.iter().any(|r| r.id == rec.id) {
                return Err(broken());
            }
            next = rec.parent.clone();
            out.push(rec);
        }
        Ok(out)
    }
}

impl WriteTables<'_> {
    /// Read access inside the write transaction.
    pub fn tables(&self) -> &Tables<redb::Table<'_, &'static str, &'static [u8]>> {
        &self.tables
    }

    /// Stores `rec` under `key` (replacing any record there).
    pub fn put(&mut self, key: &str, rec: &Record) -> Result<(), Error> {
        let bytes = serde_json::to_vec(rec).map_err(|source| Error::Record { key: key.to_owned(), source })?;
        self.tables.snapshots.insert(key, bytes.as_slice()).map_err(|e| db(&self.tables.path, e))?;
        Ok(())
    }

    /// Deletes the record of `key`.
    pub fn delete(&mut self, key: &str) -> Result<(), Error> {
        self.tables.snapshots.remove(key).map_err(|e| db(&self.tables.path, e))?;
        Ok(())
    }

    /// A new snapshot id (ids start at 1 and are never reused).
    pub fn next_id(&mut self) -> Result<u64, Error> {
        let path = &self.tables.path;
        let id = self.counters.get(NEXT_ID).map_err(|e| db(path, e))?.map_or(1, |v| v.value());
        self.counters.insert(NEXT_ID, id + 1).map_err(|e| db(path, e))?;
        Ok(id)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Record { key: key.to_owned(), source })
}

fn db(path: &Path, e: impl Into<redb::Error>) -> Error {
    Error::Database { path: path.to_path_buf(), source: Box::new(e.into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, parent: &str) -> Record {
        Record {
            id,
            kind: Kind::Committed,
            parent: parent.to_owned(),
            labels: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
            created: Time::now(),
            updated: Time::now(),
            usage: DiskUsage { size: 4096, inodes: 2 },
            remote: None,
        }
    }

    #[test]
    fn records_and_ids_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            store
                .write(|t| {
                    let id = t.next_id()?;
                    t.put("base", &record(id, ""))
                })
                .unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        let got = store.read(|t| t.require("base")).unwrap();
        assert_eq!(got, record(1, "").with_times(got.created, got.updated));
        assert_eq!(store.write(|t| t.next_id()).unwrap(), 2, "ids are never reused");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let r: Result<(), Error> = store.write(|t| {
            t.put("x", &record(1, ""))?;
            Err(Error::EmptyKey)
        });
        assert!(r.is_err());
        assert_eq!(store.read(|t| t.get("x")).unwrap(), None);
    }

    #[test]
    fn chains_are_followed_nearest_first_and_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        store
            .write(|t| {
                t.put("a", &record(1, ""))?;
                t.put("b", &record(2, "a"))?;
                t.put("x", &record(3, "y"))?;
                t.put("y", &record(4, "x"))
            })
            .unwrap();
        let ids: Vec<u64> = store.read(|t| t.chain("c", "b")).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, [2, 1]);
        assert!(matches!(store.read(|t| t.chain("z", "x")), Err(Error::BrokenChain { .. })));
        assert!(matches!(store.read(|t| t.chain("z", "gone")), Err(Error::BrokenChain { .. })));
    }

    impl Record {
        fn with_times(mut self, created: Time, updated: Time) -> Record {
            self.created = created;
            self.updated = updated;
            self
        }
    }
}
