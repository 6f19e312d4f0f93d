//! [`DiskCache`]: decoded, verified spans on local disk, shared by every mount on the machine and kept
//! across runs.
//!
//! Layout of the cache directory:
//! - `spans/ab/abcdef…`: the decoded bytes of a span, named by their sha256 (the digest recorded at index
//!   time). Content addressed, so identical spans of different layers or images are stored once. A file
//!   is valid iff its bytes hash to its name.
//! - `spans/ab/abcdef….zst`: the same, compressed, for a span that compresses well (tar headers around
//!   tiny files): see `compressed`. Valid iff its bytes inflate to bytes that hash to its name.
//! - `files/ab/KEY.DIGEST`: a whole regular file assembled from cached spans for FUSE passthrough
//!   ([`crate::ContentStore::cached_file`]); KEY names what the file is made of, and the file is valid iff
//!   its bytes hash to DIGEST.
//! - `prefixes/ab/KEY`: the compressed bytes of a span's prefix that a partial fetch brought, so a later
//!   process fetches only the rest (see `prefix`); valid iff they match the index's chunk digests.
//! - `prefixes/ab/SPAN.part`: the decoded bytes that prefix gave, so a later process need not inflate it
//!   again; used only when sealed.
//! - `.tmp-*` files next to those: writes in progress. Every file is written under a temp name and renamed
//!   into place, so a crash never leaves a half-written file under a digest name.
//!
//! There is no index that concurrent processes could corrupt: the directory is the index. A process
//! verifies a file the first time it reads it (a crash can lose the data of a renamed but unsynced file)
//! and remembers that it did; a file that fails is deleted. A file known good and synced to disk is
//! sealed (made read-only, see `seal`): later processes trust it without hashing it, and read small
//! ranges of it ([`DiskCache::get_range`]) instead of whole spans. Each process keeps a running total of the
//! bytes it knows of, started by a scan of the directory in the background at open (which also learns which
//! span files are sealed, so reads can trust them without opening them first); when the total passes the
//! bound, one eviction pass runs in the background: it scans the directory (learning what other processes
//! added) and deletes the least recently used files (oldest mtime; hits touch it) until the total is 10 %
//! below the bound.
//!
//! The jobs live apart: this module reads, verifies and writes span files and counts what it does;
//! `compressed` is the compressed form of a span file; `seal` marks files later processes may trust;
//! `prefix` keeps the prefixes partial fetches brought; `evict` keeps the bound; `files` holds the
//! file-system helpers (temp files renamed into place, the private directory, the default location, span
//! file names and opening a span file in either form).

mod compressed;
mod evict;
mod files;
mod page_in;
mod prefix;
mod seal;

use clip_format::Digest;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tracing::{debug, warn};

pub use evict::Evicted;
pub use files::{default_cache_dir, private_dir};
pub(crate) use files::{parse_digest, touch, Form};
pub(crate) use page_in::will_need;
pub(crate) use prefix::prefix_key;
pub(crate) use seal::{is_sealed, touch_if_stale};

use crate::{lock, StoreError};
use compressed::Unusable;

pub(crate) const SPANS_DIR: &str = "spans";
pub(crate) const FILES_DIR: &str = "files";
/// Ends the name of a compressed span file.
const COMPRESSED_SUFFIX: &str = ".zst";
/// Forget verification marks beyond this many (they are re-earned by hashing again).
const MAX_VERIFIED: usize = 1 << 20;

/// The disk space a cache file of `len` bytes takes, as the running total estimates it between scans: whole
/// 4 KiB blocks (scans count the blocks the file system reports). `--cache-size` bounds this, not the bytes.
pub(crate) fn on_disk(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

/// A span cache directory bounded in size, safe to share between processes. See the module docs.
pub struct DiskCache {
    root: PathBuf,
    limit: u64,
    /// Bytes of cache files this process knows of.
    total: AtomicU64,
    /// Span digests whose files this process has verified (or written), and the form each is kept in.
    verified: Mutex<HashMap<Digest, Form>>,
    /// Spans whose decoded prefix file the scan found sealed, or this process wrote: where a read may take
    /// its bytes from that file by range ([`DiskCache::get_part_range`] still checks it). A hint, bounded
    /// like `verified`.
    parts: Mutex<HashSet<Digest>>,
    /// Materialized files this process has verified (or written), by key.
    pub(crate) verified_files: Mutex<HashMap<Digest, PathBuf>>,
    evicting: AtomicBool,
    evict_pass: Mutex<()>,
    /// Where eviction passes run when a write comes from a thread outside any runtime.
    runtime: Option<tokio::runtime::Handle>,
    tmp_seq: AtomicU64,
    counters: CacheCounters,
    /// Set when the scan started at open is done (read on the read path: a load, no lock).
    scanned: AtomicBool,
    /// Wakes [`DiskCache::wait_scanned`] when `scanned` is set.
    scan_done: (Mutex<()>, Condvar),
}

#[derive(Default)]
struct CacheCounters {
    hits: AtomicU64,
    verify_failures: AtomicU64,
    evictions: AtomicU64,
    bytes_evicted: AtomicU64,
    write_failures: AtomicU64,
}

/// Counters of a [`DiskCache`] in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Disk space (whole blocks) the cache takes, as this process last knew it.
    pub bytes: u64,
    /// Spans and files served from the cache.
    pub hits: u64,
    /// Files that failed verification and were deleted.
    pub verify_failures: u64,
    /// Files deleted to stay under the bound.
    pub evictions: u64,
    /// Bytes those files held.
    pub bytes_evicted: u64,
    /// Writes that failed (disk full, permissions); the bytes were still served.
    pub write_failures: u64,
}

static SHARING: AtomicBool = AtomicBool::new(false);

/// From now on, the stores of this process take their disk cache from [`DiskCache::shared`] rather than each
/// opening its own: for a process serving many mounts (the mount daemon).
pub fn share_disk_caches() {
    SHARING.store(true, Ordering::Relaxed);
}

impl DiskCache {
    /// Opens (creating) the cache at `root`, bounded to `limit` bytes. A scan in the background then learns
    /// its size and which span files are sealed, removes stale temp files and evicts if it is over the bound
    /// (nobody waits for it: a fresh mount over a big cache serves its first reads meanwhile).
    pub fn open(root: impl Into<PathBuf>, limit: u64) -> Result<Arc<DiskCache>, StoreError> {
        let root = root.into();
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Cache { path, source }
        };
        // The cache holds image contents: other users of the machine must not read them.
        private_dir(&root).map_err(err(&root))?;
        for sub in [SPANS_DIR, FILES_DIR] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(err(&dir))?;
        }
        let cache = Arc::new(DiskCache {
            root: root.clone(),
            limit,
            total: AtomicU64::new(0),
            verified: Mutex::default(),
            parts: Mutex::default(),
            verified_files: Mutex::default(),
            evicting: AtomicBool::new(false),
            evict_pass: Mutex::new(()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            tmp_seq: AtomicU64::new(0),
            counters: CacheCounters::default(),
            scanned: AtomicBool::new(false),
            scan_done: Default::default(),
        });
        // Refuse a directory we cannot write now rather than failing every write later.
        drop(cache.temp_file(&root.join(SPANS_DIR)).map_err(err(&root))?);
        let me = Arc::clone(&cache);
        let scan = move || me.first_scan();
        if let Err(e) = std::thread::Builder::new().name("clip-cache-scan".into()).spawn(scan.clone()) {
            debug!(error = %e, "no thread for the cache scan; scanning now");
            scan();
        }
        Ok(cache)
    }

    /// The disk cache at `root` bounded to `limit` that this process opened through this function, or a newly
    /// opened one ([`DiskCache::open`]), kept open for the process's life: stores that share a directory's
    /// cache scan it once, keep one running total and one eviction pass, and trust what one of them verified
    /// (and a later store over it does none of that again). Its figures ([`DiskCache::stats`]) are of them all.
    pub fn shared(root: impl Into<PathBuf>, limit: u64) -> Result<Arc<DiskCache>, StoreError> {
        static OPEN: Mutex<Vec<Arc<DiskCache>>> = Mutex::new(Vec::new());
        let root = root.into();
        let mut open = lock(&OPEN);
        if let Some(cache) = open.iter().find(|c| c.root == root && c.limit == limit) {
            return Ok(Arc::clone(cache));
        }
        let cache = DiskCache::open(root, limit)?;
        open.push(Arc::clone(&cache));
        Ok(cache)
    }

    /// A store's disk cache: [`DiskCache::shared`] in a process that called [`share_disk_caches`], else its
    /// own ([`DiskCache::open`]).
    pub(crate) fn for_store(root: &Path, limit: u64) -> Result<Arc<DiskCache>, StoreError> {
        if SHARING.load(Ordering::Relaxed) {
            DiskCache::shared(root, limit)
        } else {
            DiskCache::open(root, limit)
        }
    }

    /// Whether the scan started at open is done (then every span file sealed before it is known verified).
    pub fn scanned(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }

    /// Blocks until the scan started at open is done.
    pub fn wait_scanned(&self) {
        let mut guard = lock(&self.scan_done.0);
        while !self.scanned() {
            guard = self.scan_done.1.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The size bound in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            bytes: load(&self.total),
            hits: load(&c.hits),
            verify_failures: load(&c.verify_failures),
            evictions: load(&c.evictions),
            bytes_evicted: load(&c.bytes_evicted),
            write_failures: load(&c.write_failures),
        }
    }

    /// Whether a span file for `digest` exists (not verified: for cheap "already cached" checks).
    pub fn contains(&self, digest: &Digest) -> bool {
        [Form::Raw, Form::Compressed]
            .iter()
            .any(|&f| fs::metadata(self.span_file(digest, f)).is_ok_and(|m| m.is_file()))
    }

    /// The `len` bytes of the span with `digest`, if cached and valid. A file that fails verification is
    /// deleted (and counted) and `None` returned, so the caller fetches the span again.
    pub fn get(&self, digest: &Digest, len: u64) -> Option<Vec<u8>> {
        let span = self.open_span(digest)?;
        let size = span.meta.len();
        let buf = match span.read(len, 0..len) {
            Ok(buf) => buf,
            Err(Unusable::Damaged(why)) => {
                self.reject(&span.path, Some(digest), size, why);
                return None;
            }
            Err(Unusable::Io(e)) => {
                debug!(path = %span.path.display(), error = %e, "disk cache file unreadable");
                return None;
            }
        };
        if !self.is_verified(digest) {
            if !is_sealed(&span.meta) {
                if Digest::of(&buf) != *digest {
                    self.reject(&span.path, Some(digest), size, "bytes do not match the name");
                    return None;
                }
                self.seal(span.path.clone());
            }
            self.mark_verified(digest, span.form);
        }
        touch_if_stale(&span.file, &span.meta);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(buf)
    }

    /// Bytes `range` of the `len`-byte span with `digest`, read from its file without reading the rest (a
    /// compressed one inflates only the frames the range touches), when the file is trusted: verified by
    /// this process or sealed by one before. `None` otherwise (and when missing, of another length or
    /// damaged): then [`DiskCache::get`] reads the whole span, verifies it and deletes a bad file.
    pub fn get_range(&self, digest: &Digest, len: u64, range: Range<u64>) -> Option<Vec<u8>> {
        if range.start > range.end || range.end > len {
            return None;
        }
        let span = self.open_span(digest)?;
        if span.form == Form::Raw && span.meta.len() != len {
            return None;
        }
        if !self.is_verified(digest) {
            if !is_sealed(&span.meta) {
                return None;
            }
            self.mark_verified(digest, span.form);
        }
        let buf = span.read(len, range).ok()?;
        touch_if_stale(&span.file, &span.meta);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(buf)
    }

    /// Stores verified span bytes under their digest, compressed when that saves most of their disk
    /// blocks (see `compressed`), atomically; a failure is counted and logged, never fatal: the bytes are
    /// still served.
    pub fn put(self: &Arc<Self>, digest: &Digest, bytes: &[u8]) {
        let len = bytes.len() as u64;
        if len > self.limit {
            return;
        }
        for form in [Form::Raw, Form::Compressed] {
            if let Ok(existing) = File::open(self.span_file(digest, form)) {
                touch(&existing);
                return;
            }
        }
        let packed = compressed::compress(bytes);
        let (form, data) = match &packed {
            Some(packed) => (Form::Compressed, &packed[..]),
            None => (Form::Raw, bytes),
        };
        let path = self.span_file(digest, form);
        if self.write_file(&path, data) {
            self.mark_verified(digest, form);
            self.added(on_disk(data.len() as u64));
            self.seal(path);
        }
    }

    /// Writes `bytes` to `path` atomically (a temp file beside it, renamed into place). A failure is
    /// counted and logged, never fatal (the bytes are still served): returns whether the file was written.
    pub(crate) fn write_file(&self, path: &Path, bytes: &[u8]) -> bool {
        let written = path.parent().ok_or_else(|| io::Error::other("no parent")).and_then(|dir| {
            let mut tmp = self.temp_file(dir)?;
            io::Write::write_all(&mut tmp.file, bytes)?;
            tmp.publish(path)
        });
        if let Err(e) = &written {
            self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
            warn!(path = %path.display(), error = %e, "cannot write to the disk cache; serving without it");
        }
        written.is_ok()
    }

    pub(crate) fn is_verified(&self, digest: &Digest) -> bool {
        lock(&self.verified).contains_key(digest)
    }

    pub(crate) fn mark_verified(&self, digest: &Digest, form: Form) {
        let mut known = lock(&self.verified);
        if known.len() >= MAX_VERIFIED {
            known.clear();
        }
        known.insert(*digest, form);
    }

    /// Deletes a cache file that failed verification.
    pub(crate) fn reject(&self, path: &Path, span: Option<&Digest>, size: u64, why: &str) {
        warn!(path = %path.display(), why, "disk cache file failed verification; deleted, will fetch again");
        self.counters.verify_failures.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = span {
            lock(&self.verified).remove(d);
        }
        if fs::remove_file(path).is_ok() {
            self.forget(on_disk(size));
        }
    }

    /// Takes `size` bytes (of a file this process deleted or replaced) off the running total.
    pub(crate) fn forget(&self, size: u64) {
        let _ = self.total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(size)));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_stores_of_a_process_share_one_cache_per_directory_and_bound() {
        let dir = tempfile::tempdir().unwrap();
        let a = DiskCache::shared(dir.path(), 1 << 20).unwrap();
        let b = DiskCache::shared(dir.path(), 1 << 20).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "a second store over the directory opened it again");
        // What one verified, the other trusts.
        let digest = Digest::of(b"span");
        a.mark_verified(&digest, Form::Raw);
        assert!(b.is_verified(&digest));
        // Another bound is another cache, as another directory is.
        assert!(!Arc::ptr_eq(&a, &DiskCache::shared(dir.path(), 2 << 20).unwrap()));
        let other = tempfile::tempdir().unwrap();
        assert!(!Arc::ptr_eq(&a, &DiskCache::shared(other.path(), 1 << 20).unwrap()));
        // Open on its own, a cache is its own.
        assert!(!Arc::ptr_eq(&a, &DiskCache::open(dir.path(), 1 << 20).unwrap()));
    }

    #[test]
    fn the_cache_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = dir.path().join("fresh");
        DiskCache::open(&fresh, 1 << 20).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        // One made by an older clip, open to everyone, is made private.
        let old = dir.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        DiskCache::open(&old, 1 << 20).unwrap();
        assert_eq!(mode(&old), 0o700);
    }

    #[test]
    fn put_get_roundtrip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        // A put while the scan runs may be counted twice until the next eviction pass.
        cache.wait_scanned();
        let bytes = b"hello span".to_vec();
        let d = Digest::of(&bytes);
        assert!(!cache.contains(&d));
        assert_eq!(cache.get(&d, bytes.len() as u64), None);
        cache.put(&d, &bytes);
        assert!(cache.contains(&d));
        assert_eq!(cache.get(&d, bytes.len() as u64).as_deref(), Some(&bytes[..]));
        assert_eq!(cache.stats().bytes, on_disk(bytes.len() as u64), "a whole block is counted");
        // No temp files remain next to the span.
        let shard = cache.span_path(&d).parent().unwrap().to_path_buf();
        let names: Vec<_> = fs::read_dir(shard).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(d.hex())]);

        let again = DiskCache::open(dir.path(), 1 << 20).unwrap();
        again.wait_scanned();
        let blocks = fs::metadata(cache.span_path(&d)).unwrap().blocks() * 512;
        assert_eq!(again.stats().bytes, blocks, "a scan counts what the file system allocated");
        assert_eq!(again.get(&d, bytes.len() as u64).as_deref(), Some(&bytes[..]));
    }

    #[test]
    fn corrupt_file_is_deleted_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![42u8; 1000];
        let d = Digest::of(&bytes);
        let first = DiskCache::open(dir.path(), 1 << 20).unwrap();
        first.put(&d, &bytes);
        let path = first.span_path(&d);
        let mut on_disk = fs::read(&path).unwrap();
        on_disk[500] ^= 1;
        // As a crash before the bytes reached the disk leaves it: not sealed (see `seal`).
        let unsealed = || {
            fs::set_permissions(&path, <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
                .unwrap()
        };
        unsealed();
        fs::write(&path, &on_disk).unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.wait_scanned();
        assert_eq!(cache.get(&d, 1000), None);
        assert!(!path.exists());
        assert_eq!(cache.stats().verify_failures, 1);

        // A truncated file (a crash before the data reached the disk) is rejected too.
        cache.put(&d, &bytes);
        unsealed();
        fs::write(&path, &bytes[..10]).unwrap();
        let fresh = DiskCache::open(dir.path(), 1 << 20).unwrap();
        fresh.wait_scanned();
        assert_eq!(fresh.get(&d, 1000), None);
        assert_eq!(fresh.stats().verify_failures, 1);
    }

    #[test]
    fn unwritable_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let err = DiskCache::open(&file, 1 << 20).err().unwrap();
        assert!(err.to_string().contains("choose another cache directory"), "{err}");
    }
}
