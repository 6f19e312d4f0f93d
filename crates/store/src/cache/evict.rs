//! Keeping a [`DiskCache`] under its bound, counted in disk blocks (not file lengths): a running total of the
//! space this process knows of, and eviction passes that scan the directory (learning what other processes
//! added), delete the least recently used files (oldest mtime) until it is 10 % under the bound, and remove
//! stale temp files.

use clip_format::Digest;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::files::{Form, TMP_PREFIX};
use super::prefix::{PART_SUFFIX, PREFIXES_DIR};
use super::{is_sealed, parse_digest, DiskCache, COMPRESSED_SUFFIX, FILES_DIR, SPANS_DIR};
use crate::lock;

/// A temp file this old belongs to a writer that died; it is removed by the next scan.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// What one eviction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Files deleted.
    pub files: u64,
    /// Bytes they held.
    pub bytes: u64,
}

/// One cache file seen by a scan.
struct Entry {
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
    /// The digest and the form it is kept in, for span files.
    span: Option<(Digest, Form)>,
    /// The span's digest, for a decoded prefix file.
    part: Option<Digest>,
    /// Whether the file is sealed (see `seal`).
    sealed: bool,
}

impl DiskCache {
    /// The scan at open: starts the running total from what the directory holds (plus what this process
    /// added meanwhile), marks sealed span files verified (a read trusts them as it would on opening them),
    /// notes sealed decoded prefix files (reads take their pieces from them by range), evicts when over the
    /// bound, then wakes [`DiskCache::wait_scanned`]. A file this process writes while the scan runs may be
    /// counted twice, until the next eviction pass counts afresh.
    pub(super) fn first_scan(&self) {
        let before = self.total.load(Ordering::Relaxed);
        match self.scan() {
            Ok(entries) => {
                let total: u64 = entries.iter().map(|e| e.size).sum();
                for e in entries.iter().filter(|e| e.sealed) {
                    if let Some((d, form)) = &e.span {
                        self.mark_verified(d, *form);
                    }
                    if let Some(d) = &e.part {
                        self.note_part(d);
                    }
                }
                let during = self.total.load(Ordering::Relaxed).saturating_sub(before);
                self.total.store(total + during, Ordering::Relaxed);
                debug!(dir = %self.root.display(), bytes = total, files = entries.len(), limit = self.limit, "scanned disk cache");
                if total > self.limit {
                    self.evict();
                }
            }
            Err(e) => {
                warn!(dir = %self.root.display(), error = %e, "cannot scan the disk cache; its size is not known")
            }
        }
        // Set under the lock, so a waiter that saw it unset is waiting before the notification.
        let _guard = lock(&self.scan_done.0);
        self.scanned.store(true, Ordering::Release);
        self.scan_done.1.notify_all();
    }

    /// Accounts `len` new bytes and starts an eviction pass when over the bound.
    pub(crate) fn added(self: &Arc<Self>, len: u64) {
        let total = self.total.fetch_add(len, Ordering::Relaxed) + len;
        if total <= self.limit || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let pass = move || {
            // Writes during a pass may leave the total over the bound again: run another (a few at most,
            // in case files cannot be deleted).
            for _ in 0..3 {
                me.evict();
                if me.total.load(Ordering::Relaxed) <= me.limit {
                    break;
                }
            }
            me.evicting.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            Some(rt) => drop(rt.spawn_blocking(pass)),
            None => pass(),
        }
    }

    /// One eviction pass: scans the directory and, when it holds more than the bound, deletes the least
    /// recently used files until it is 10 % under. Safe to run in several processes at once.
    pub fn evict(&self) -> Evicted {
        let _pass = lock(&self.evict_pass);
        let before = self.total.load(Ordering::Relaxed);
        let mut entries = match self.scan() {
            Ok(e) => e,
            Err(e) => {
                warn!(dir = %self.root.display(), error = %e, "cannot scan the disk cache; not evicting");
                return Evicted::default();
            }
        };
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut out = Evicted::default();
        if total > self.limit {
            let target = self.limit - self.limit / 10;
            entries.sort_by_key(|e| e.mtime);
            for e in &entries {
                if total <= target {
                    break;
                }
                match fs::remove_file(&e.path) {
                    Ok(()) => {
                        out.files += 1;
                        out.bytes += e.size;
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        debug!(path = %e.path.display(), error = %err, "cannot evict");
                        continue;
                    }
                }
                total -= e.size;
                if let Some((d, _)) = &e.span {
                    lock(&self.verified).remove(d);
                }
            }
        }
        // Keep what this process added while the pass ran.
        let during = self.total.load(Ordering::Relaxed).saturating_sub(before);
        self.total.store(total + during, Ordering::Relaxed);
        self.counters.evictions.fetch_add(out.files, Ordering::Relaxed);
        self.counters.bytes_evicted.fetch_add(out.bytes, Ordering::Relaxed);
        if out.files > 0 {
            debug!(files = out.files, bytes = out.bytes, remaining = total, limit = self.limit, "evicted");
        }
        out
    }

    /// Every cache file, removing stale temp files on the way. Files vanishing meanwhile (another process
    /// evicting) are skipped; names that are not ours are left alone and not counted.
    fn scan(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let now = SystemTime::now();
        for area in [SPANS_DIR, FILES_DIR, PREFIXES_DIR] {
            let shards = match fs::read_dir(self.root.join(area)) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for shard in shards.flatten() {
                let Ok(files) = fs::read_dir(shard.path()) else { continue };
                for entry in files.flatten() {
                    let Ok(meta) = entry.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    if name.starts_with(TMP_PREFIX) {
                        if now.duration_since(mtime).is_ok_and(|age| age > STALE_TMP) {
                            let _ = fs::remove_file(entry.path());
                        }
                        continue;
                    }
                    let mut part = None;
                    let span = match area {
                        SPANS_DIR => {
                            let (hex, form) = match name.strip_suffix(COMPRESSED_SUFFIX) {
                                Some(hex) => (hex, Form::Compressed),
                                None => (name, Form::Raw),
                            };
                            match parse_digest(hex) {
                                Some(d) => Some((d, form)),
                                None => continue,
                            }
                        }
                        PREFIXES_DIR => {
                            // `KEY` (a compressed prefix) or `SPAN.part` (a decoded one).
                            let hex = name.strip_suffix(PART_SUFFIX);
                            let Some(d) = parse_digest(hex.unwrap_or(name)) else { continue };
                            part = hex.map(|_| d);
                            None
                        }
                        _ => {
                            let valid = name
                                .split_once('.')
                                .is_some_and(|(k, c)| parse_digest(k).is_some() && parse_digest(c).is_some());
                            if !valid {
                                continue;
                            }
                            None
                        }
                    };
                    // What the file takes on disk, not its length: a 100-byte span costs a whole block.
                    let sealed = is_sealed(&meta);
                    out.push(Entry { path: entry.path(), size: meta.blocks() * 512, mtime, span, part, sealed });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn eviction_keeps_the_bound_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 10_000).unwrap();
        cache.wait_scanned();
        let mut digests = Vec::new();
        for i in 0..30u8 {
            let bytes = vec![i; 1000];
            let d = Digest::of(&bytes);
            cache.put(&d, &bytes);
            // Distinct mtimes even on coarse-grained filesystems.
            let f = File::open(cache.span_path(&d)).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + u64::from(i))).unwrap();
            digests.push(d);
        }
        cache.evict();
        let on_disk: u64 = cache.scan().unwrap().iter().map(|e| e.size).sum();
        assert!(on_disk <= 10_000, "{on_disk} bytes on disk");
        assert_eq!(cache.stats().bytes, on_disk);
        assert!(cache.stats().evictions >= 20);
        assert!(cache.contains(digests.last().unwrap()));
        assert!(!cache.contains(&digests[0]));
    }

    #[test]
    fn stale_temp_files_are_removed_and_foreign_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join(SPANS_DIR).join("ab");
        fs::create_dir_all(&shard).unwrap();
        let stale = shard.join(".tmp-1-1");
        let fresh = shard.join(".tmp-1-2");
        let foreign = shard.join("README");
        for p in [&stale, &fresh, &foreign] {
            fs::write(p, b"x").unwrap();
        }
        File::options().write(true).open(&stale).unwrap().set_modified(SystemTime::UNIX_EPOCH).unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.wait_scanned();
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert!(foreign.exists());
        assert_eq!(cache.stats().bytes, 0);
    }
}
