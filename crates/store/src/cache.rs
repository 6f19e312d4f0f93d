//! [`DiskCache`]: decoded, verified spans on local disk, shared by every mount on the machine and kept
//! across runs.
//!
//! Layout of the cache directory:
//! - `spans/ab/abcdef…`: the decoded bytes of a span, named by their sha256 (the digest recorded at index
//!   time). Content addressed, so identical spans of different layers or images are stored once. A file
//!   is valid iff its bytes hash to its name.
//! - `files/ab/KEY.DIGEST`: a whole regular file assembled from cached spans for FUSE passthrough
//!   ([`crate::ContentStore::cached_file`]); KEY names what the file is made of, and the file is valid iff
//!   its bytes hash to DIGEST.
//! - `.tmp-*` files next to those: writes in progress. Every file is written under a temp name and renamed
//!   into place, so a crash never leaves a half-written file under a digest name.
//!
//! There is no index that concurrent processes could corrupt: the directory is the index. A process
//! verifies a file the first time it reads it (a crash can lose the data of a renamed but unsynced file)
//! and remembers that it did; a file that fails is deleted. Each process keeps a running total of the
//! bytes it knows of; when the total passes the bound, one eviction pass runs in the background: it scans
//! the directory (learning what other processes added) and deletes the least recently used files (oldest
//! mtime; hits touch it) until the total is 10 % below the bound.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::{lock, StoreError};

pub(crate) const SPANS_DIR: &str = "spans";
pub(crate) const FILES_DIR: &str = "files";
const TMP_PREFIX: &str = ".tmp-";
/// A temp file this old belongs to a writer that died; it is removed by the next scan.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Forget verification marks beyond this many (they are re-earned by hashing again).
const MAX_VERIFIED: usize = 1 << 20;

/// A span cache directory bounded in size, safe to share between processes. See the module docs.
pub struct DiskCache {
    root: PathBuf,
    limit: u64,
    /// Bytes of cache files this process knows of.
    total: AtomicU64,
    /// Span digests whose files this process has verified (or written).
    verified: Mutex<HashSet<[u8; 32]>>,
    /// Materialized files this process has verified (or written), by key.
    pub(crate) verified_files: Mutex<HashMap<[u8; 32], PathBuf>>,
    evicting: AtomicBool,
    evict_pass: Mutex<()>,
    /// Where eviction passes run when a write comes from a thread outside any runtime.
    runtime: Option<tokio::runtime::Handle>,
    tmp_seq: AtomicU64,
    counters: CacheCounters,
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
    /// Bytes in the cache as this process last knew it.
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

/// What one eviction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    pub files: u64,
    pub bytes: u64,
}

/// One cache file seen by a scan.
struct Entry {
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
    /// The digest, for span files.
    span: Option<[u8; 32]>,
}

/// A file being written; removed on drop unless published.
pub(crate) struct TempFile {
    path: PathBuf,
    pub file: File,
    published: bool,
}

impl TempFile {
    /// Renames the file to `to` (atomically replacing any file there).
    pub fn publish(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or makes an existing one 0700 when others may enter
/// it (made by an older clip, or by hand). Returns the mode it had when it was made private, `None` when
/// it already was.
pub fn private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode & 0o7777))
}

impl DiskCache {
    /// Opens (creating) the cache at `root`, bounded to `limit` bytes: scans it to learn its size, removes
    /// stale temp files and evicts if it is over the bound.
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
            verified_files: Mutex::default(),
            evicting: AtomicBool::new(false),
            evict_pass: Mutex::new(()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            tmp_seq: AtomicU64::new(0),
            counters: CacheCounters::default(),
        });
        // Refuse a directory we cannot write now rather than failing every write later.
        drop(cache.temp_file(&root.join(SPANS_DIR)).map_err(err(&root))?);
        let entries = cache.scan().map_err(err(&root))?;
        let total: u64 = entries.iter().map(|e| e.size).sum();
        cache.total.store(total, Ordering::Relaxed);
        debug!(dir = %root.display(), bytes = total, files = entries.len(), limit, "opened disk cache");
        if total > limit {
            cache.evict();
        }
        Ok(cache)
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

    /// The path of the span whose bytes hash to `digest`.
    pub fn span_path(&self, digest: &[u8; 32]) -> PathBuf {
        let name = hex::encode(digest);
        self.root.join(SPANS_DIR).join(&name[..2]).join(name)
    }

    /// Whether a span file for `digest` exists (not verified: for cheap "already cached" checks).
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        fs::metadata(self.span_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// The `len` bytes of the span with `digest`, if cached and valid. A file that fails verification is
    /// deleted (and counted) and `None` returned, so the caller fetches the span again.
    pub fn get(&self, digest: &[u8; 32], len: u64) -> Option<Vec<u8>> {
        let path = self.span_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    debug!(path = %path.display(), error = %e, "disk cache file unreadable");
                }
                return None;
            }
        };
        let size = file.metadata().ok()?.len();
        if size != len {
            self.reject(&path, Some(digest), size, "wrong length");
            return None;
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(usize::try_from(len).ok()?).ok()?;
        if let Err(e) = (&file).take(len).read_to_end(&mut buf) {
            debug!(path = %path.display(), error = %e, "disk cache file unreadable");
            return None;
        }
        if buf.len() as u64 != len {
            self.reject(&path, Some(digest), size, "shorter than it was");
            return None;
        }
        if !self.is_verified(digest) {
            let actual: [u8; 32] = Sha256::digest(&buf).into();
            if actual != *digest {
                self.reject(&path, Some(digest), size, "bytes do not match the name");
                return None;
            }
            self.mark_verified(digest);
        }
        touch(&file);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(buf)
    }

    /// Stores verified span bytes under their digest (atomically; a failure is counted and logged, never
    /// fatal: the bytes are still served).
    pub fn put(self: &Arc<Self>, digest: &[u8; 32], bytes: &[u8]) {
        let len = bytes.len() as u64;
        if len > self.limit {
            return;
        }
        let path = self.span_path(digest);
        if let Ok(existing) = File::open(&path) {
            touch(&existing);
            return;
        }
        let written = path.parent().ok_or_else(|| io::Error::other("no parent")).and_then(|dir| {
            let mut tmp = self.temp_file(dir)?;
            io::Write::write_all(&mut tmp.file, bytes)?;
            tmp.publish(&path)
        });
        match written {
            Ok(()) => {
                self.mark_verified(digest);
                self.added(len);
            }
            Err(e) => {
                self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                warn!(path = %path.display(), error = %e, "cannot write to the disk cache; serving without it");
            }
        }
    }

    /// A new temp file in `dir` (created if missing).
    pub(crate) fn temp_file(&self, dir: &Path) -> io::Result<TempFile> {
        fs::create_dir_all(dir)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file, published: false })
    }

    pub(crate) fn is_verified(&self, digest: &[u8; 32]) -> bool {
        lock(&self.verified).contains(digest)
    }

    pub(crate) fn mark_verified(&self, digest: &[u8; 32]) {
        let mut set = lock(&self.verified);
        if set.len() >= MAX_VERIFIED {
            set.clear();
        }
        set.insert(*digest);
    }

    /// Deletes a cache file that failed verification.
    pub(crate) fn reject(&self, path: &Path, span: Option<&[u8; 32]>, size: u64, why: &str) {
        warn!(path = %path.display(), why, "disk cache file failed verification; deleted, will fetch again");
        self.counters.verify_failures.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = span {
            lock(&self.verified).remove(d);
        }
        if fs::remove_file(path).is_ok() {
            let _ = self.total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(size)));
        }
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
                if let Some(d) = &e.span {
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
        for area in [SPANS_DIR, FILES_DIR] {
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
                    let span = match area {
                        SPANS_DIR => match parse_digest(name) {
                            Some(d) => Some(d),
                            None => continue,
                        },
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
                    out.push(Entry { path: entry.path(), size: meta.len(), mtime, span });
                }
            }
        }
        Ok(out)
    }
}

/// Where the disk cache lives by default: `/var/cache/clip` for root, else `$XDG_CACHE_HOME/clip` or
/// `~/.cache/clip` (`$TMPDIR/clip-cache` when there is no home directory either).
pub fn default_cache_dir() -> PathBuf {
    if effective_uid() == Some(0) {
        return PathBuf::from("/var/cache/clip");
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return xdg.join("clip");
    }
    match std::env::var_os("HOME").and_then(absolute) {
        Some(home) => home.join(".cache").join("clip"),
        None => std::env::temp_dir().join("clip-cache"),
    }
}

pub(crate) fn parse_digest(hex_name: &str) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    (hex_name.len() == 64 && hex::decode_to_slice(hex_name, &mut d).is_ok()).then_some(d)
}

/// Marks a cache file as just used (its mtime is the LRU clock; atime is often not kept).
pub(crate) fn touch(file: &File) {
    let _ = file.set_modified(SystemTime::now());
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
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
        let bytes = b"hello span".to_vec();
        let d = digest(&bytes);
        assert!(!cache.contains(&d));
        assert_eq!(cache.get(&d, bytes.len() as u64), None);
        cache.put(&d, &bytes);
        assert!(cache.contains(&d));
        assert_eq!(cache.get(&d, bytes.len() as u64).as_deref(), Some(&bytes[..]));
        assert_eq!(cache.stats().bytes, bytes.len() as u64);
        // No temp files remain next to the span.
        let shard = cache.span_path(&d).parent().unwrap().to_path_buf();
        let names: Vec<_> = fs::read_dir(shard).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(hex::encode(d))]);

        let again = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.stats().bytes, bytes.len() as u64);
        assert_eq!(again.get(&d, bytes.len() as u64).as_deref(), Some(&bytes[..]));
    }

    #[test]
    fn corrupt_file_is_deleted_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![42u8; 1000];
        let d = digest(&bytes);
        DiskCache::open(dir.path(), 1 << 20).unwrap().put(&d, &bytes);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let path = cache.span_path(&d);
        let mut on_disk = fs::read(&path).unwrap();
        on_disk[500] ^= 1;
        fs::write(&path, &on_disk).unwrap();
        assert_eq!(cache.get(&d, 1000), None);
        assert!(!path.exists());
        assert_eq!(cache.stats().verify_failures, 1);

        // A truncated file (a crash before the data reached the disk) is rejected too.
        cache.put(&d, &bytes);
        let fresh = DiskCache::open(dir.path(), 1 << 20).unwrap();
        fs::write(&path, &bytes[..10]).unwrap();
        assert_eq!(fresh.get(&d, 1000), None);
        assert_eq!(fresh.stats().verify_failures, 1);
    }

    #[test]
    fn eviction_keeps_the_bound_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 10_000).unwrap();
        let mut digests = Vec::new();
        for i in 0..30u8 {
            let bytes = vec![i; 1000];
            let d = digest(&bytes);
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
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert!(foreign.exists());
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn default_dir_is_absolute_and_named_clip() {
        let dir = default_cache_dir();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.ends_with("clip") || dir.ends_with("clip-cache"), "{}", dir.display());
        assert_eq!(effective_uid() == Some(0), dir == Path::new("/var/cache/clip"));
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
