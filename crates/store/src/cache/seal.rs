//! Seals: what lets a process trust a cache file that another process verified, without hashing it again.
//!
//! A cache file is created with mode 0600. Once its bytes are known good (verified against its name, or
//! written from verified bytes) and synced to disk (`fdatasync`), it is made read-only, mode 0400: its
//! seal. A later process serves a sealed file of the right length without reading it whole to hash it,
//! which is what makes a fresh mount over a warm cache as fast as local disk (a small file is read from its
//! span file by range, a passthrough file is handed over at once). The order matters: the data is durable
//! before the mode changes, so a crash can lose a seal but never leave one on bytes that did not reach the
//! disk; an unsealed file is hashed on first use, as before, and sealed then.
//!
//! What a seal does not cover: a file changed later by someone who can write the cache directory (mode
//! 0700, its owner only, who can change what clip serves in other ways too).

use std::fs::{File, Metadata, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tracing::debug;

use super::{touch, DiskCache};

/// The mode of a sealed cache file.
const SEALED: u32 = 0o400;
/// The mode cache files are created with.
pub(crate) const UNSEALED: u32 = 0o600;
/// A hit touches a file (its mtime is the LRU clock) only when the mtime is older than this, so reading
/// many small files from one span file does not rewrite its inode on every read.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Whether a cache file with this metadata is sealed.
pub(crate) fn is_sealed(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o7777 == SEALED
}

/// Marks `file` as just used unless it was marked less than [`TOUCH_EVERY`] ago.
pub(crate) fn touch_if_stale(file: &File, meta: &Metadata) {
    let recent = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
    if recent.is_none_or(|age| age >= TOUCH_EVERY) {
        touch(file);
    }
}

impl DiskCache {
    /// Seals the cache file at `path`, whose bytes are known good, in the background when there is a runtime
    /// (syncing can take milliseconds; nobody waits for it). A failure only means the file is hashed again by
    /// the next process that uses it.
    pub(crate) fn seal(&self, path: PathBuf) {
        let runtime = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone());
        match runtime {
            Some(rt) => drop(rt.spawn_blocking(move || seal_now(path))),
            None => seal_now(path),
        }
    }
}

fn seal_now(path: PathBuf) {
    let sealed = File::open(&path).and_then(|file| {
        file.sync_data()?;
        file.set_permissions(Permissions::from_mode(SEALED))
    });
    if let Err(error) = sealed {
        debug!(path = %path.display(), %error, "cannot seal a cache file; the next process hashes it again");
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use super::*;
    use clip_format::Digest;

    fn wait_sealed(path: &std::path::Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fs::metadata(path).is_ok_and(|m| is_sealed(&m)) {
            assert!(std::time::Instant::now() < deadline, "{} was not sealed", path.display());
            std::thread::yield_now();
        }
    }

    /// A span of `len` bytes `byte` written by one cache, and a second cache over the same directory (as a
    /// later process), once the file is sealed.
    fn written_by_another(len: usize, byte: u8) -> (tempfile::TempDir, Arc<DiskCache>, Digest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![byte; len];
        let d = Digest::of(&bytes);
        DiskCache::open(dir.path(), 1 << 20).unwrap().put(&d, &bytes);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        wait_sealed(&cache.span_path(&d));
        cache.wait_scanned();
        (dir, cache, d, bytes)
    }

    #[test]
    fn a_written_span_is_sealed_and_trusted_by_the_next_process_without_hashing() {
        let (_dir, cache, d, _) = written_by_another(10_000, 7);
        let path = cache.span_path(&d);
        // A sealed file is served by range without being hashed: a change the seal does not know of shows.
        let mut changed = fs::read(&path).unwrap();
        changed[0] ^= 1;
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, &changed).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(SEALED)).unwrap();
        assert_eq!(cache.get_range(&d, 10_000, 0..2).unwrap(), [6, 7]);
        assert_eq!(cache.stats().verify_failures, 0);
    }

    #[test]
    fn an_unsealed_file_is_hashed_first_and_a_bad_one_never_served() {
        let (dir, cache, d, bytes) = written_by_another(5000, 9);
        let path = cache.span_path(&d);
        // As a crash before the seal leaves it: unsealed, and here with bad bytes; seen by a later process
        // (one that found the file sealed trusts it from then on).
        fs::set_permissions(&path, Permissions::from_mode(UNSEALED)).unwrap();
        fs::write(&path, vec![8u8; 5000]).unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.wait_scanned();
        assert_eq!(cache.get_range(&d, 5000, 0..10), None, "unsealed: not served by range");
        assert_eq!(cache.get(&d, 5000), None, "hashed, failed, deleted");
        assert!(!path.exists());
        assert_eq!(cache.stats().verify_failures, 1);

        // Good bytes, unsealed: the first full read hashes them and seals the file.
        cache.put(&d, &bytes);
        wait_sealed(&path);
        fs::set_permissions(&path, Permissions::from_mode(UNSEALED)).unwrap();
        let fresh = DiskCache::open(dir.path(), 1 << 20).unwrap();
        fresh.wait_scanned();
        assert_eq!(fresh.get(&d, 5000).as_deref(), Some(&bytes[..]));
        wait_sealed(&path);
        assert_eq!(fresh.get_range(&d, 5000, 4990..5000).unwrap(), vec![9u8; 10]);
        assert_eq!(fresh.get_range(&d, 5000, 4990..5001), None, "past the end");
        assert_eq!(fresh.get_range(&d, 4000, 0..10), None, "wrong length");
    }
}
