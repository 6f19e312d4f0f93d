//! Prefix files: the compressed bytes of a span's prefix that a partial fetch brought (see
//! `crate::partial`), kept so that a later process (a remount over a warm cache) serves reads of that
//! prefix without fetching it again, and fetches only the rest when it needs more.
//!
//! `prefixes/ab/KEY`, where KEY names the layer blob and the chunk boundary the bytes start at
//! ([`prefix_key`]): a prefix is bytes of one compressed stream, so it is shared only by layers with the same
//! blob, unlike a span file (named by the decoded bytes). A prefix file is never trusted as it is: whoever
//! loads it checks every chunk against the index's compressed-chunk digests before decoding it, and deletes
//! it when a check fails ([`DiskCache::reject`]). Once the whole span is on disk its prefix file is removed.
//!
//! `prefixes/ab/SPAN.part`: the decoded bytes that prefix gave, the first bytes of the span whose digest is
//! SPAN, so that a remount serves them without inflating the prefix again (a gzip prefix of a few hundred
//! KB takes milliseconds to inflate, on the path of the read that needs it). Nothing in the index can check
//! them, so such a file is used only when sealed (written from checked bytes and synced, see `seal`); an
//! unsealed one is deleted on sight, and the prefix inflated again. It goes with its span's prefix file.

use clip_format::Digest;
use std::fs;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::seal::{is_sealed, touch_if_stale};
use super::{on_disk, touch, DiskCache, MAX_VERIFIED};
use crate::lock;

pub(crate) const PREFIXES_DIR: &str = "prefixes";
/// The suffix of a decoded prefix file (`SPAN.part`).
pub(crate) const PART_SUFFIX: &str = ".part";

/// What names the prefix of layer blob `layer` that starts at compressed offset `start`.
pub(crate) fn prefix_key(layer: &Digest, start: u64) -> Digest {
    let mut h = Sha256::new();
    h.update(b"clip-prefix-v1\0");
    h.update(layer.as_bytes());
    h.update(start.to_le_bytes());
    Digest::from_sha256(h.finalize().into())
}

impl DiskCache {
    fn prefix_path(&self, key: &Digest) -> PathBuf {
        let name = key.hex();
        self.root.join(PREFIXES_DIR).join(&name[..2]).join(name)
    }

    /// The bytes of prefix file `key`, unchecked (the caller checks them against the chunk digests and
    /// calls [`DiskCache::reject_prefix`] when they fail); `None` when there is none, or it is longer than
    /// `max` (no prefix of a span is, so such a file is deleted).
    pub(crate) fn get_prefix(&self, key: &Digest, max: u64) -> Option<Vec<u8>> {
        let path = self.prefix_path(key);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "prefix file unreadable");
                return None;
            }
        };
        let len = file.metadata().ok()?.len();
        if len == 0 || len > max {
            self.reject(&path, None, len, "empty, or longer than any prefix of its span");
            return None;
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len as usize).ok()?;
        // Read no more than the length seen: a file growing meanwhile is not ours.
        (&file).take(len).read_to_end(&mut buf).ok()?;
        touch(&file);
        Some(buf)
    }

    /// Deletes prefix file `key`, whose bytes failed their check.
    pub(crate) fn reject_prefix(&self, key: &Digest, len: u64) {
        self.reject(&self.prefix_path(key), None, len, "compressed bytes do not match the chunk digests");
    }

    /// Keeps `bytes`, a checked prefix, as prefix file `key` (replacing a shorter one), atomically; a failure
    /// is logged and counted, never fatal.
    pub(crate) fn put_prefix(self: &Arc<Self>, key: &Digest, bytes: &[u8]) {
        self.put_longer(self.prefix_path(key), bytes);
    }

    /// Writes `bytes` to `path` unless they are empty, too big for the cache, or no longer than what is
    /// there; counts the change. Returns whether it wrote.
    fn put_longer(self: &Arc<Self>, path: PathBuf, bytes: &[u8]) -> bool {
        let len = bytes.len() as u64;
        if len == 0 || len > self.limit / 8 {
            return false;
        }
        let old = fs::metadata(&path).map_or(0, |m| m.len());
        if old >= len || !self.write_file(&path, bytes) {
            return false;
        }
        self.forget(on_disk(old));
        self.added(on_disk(len));
        true
    }

    /// Removes prefix file `key` and the decoded prefix of `span` (the whole span is on disk now).
    pub(crate) fn remove_prefix(&self, key: &Digest, span: &Digest) {
        lock(&self.parts).remove(span);
        for path in [self.prefix_path(key), self.part_path(span)] {
            if let Ok(m) = fs::metadata(&path) {
                if fs::remove_file(&path).is_ok() {
                    self.forget(on_disk(m.len()));
                }
            }
        }
    }

    pub(super) fn part_path(&self, span: &Digest) -> PathBuf {
        let name = span.hex();
        self.root.join(PREFIXES_DIR).join(&name[..2]).join(format!("{name}{PART_SUFFIX}"))
    }

    /// The first decoded bytes of span `span` (of `len` bytes) a decoded prefix file holds, when it is sealed
    /// and shorter than the span. An unsealed one (its writer died before syncing it, or has not sealed it
    /// yet) is deleted quietly, to be written again; an empty or overlong one as a failed check.
    pub(crate) fn get_part(&self, span: &Digest, len: u64) -> Option<Vec<u8>> {
        let path = self.part_path(span);
        let file = fs::File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() == 0 || meta.len() >= len {
            self.reject(&path, None, meta.len(), "a decoded prefix empty, or as long as its span");
            return None;
        }
        if !is_sealed(&meta) {
            debug!(path = %path.display(), "decoded prefix not sealed; deleted, the prefix is inflated again");
            if fs::remove_file(&path).is_ok() {
                self.forget(on_disk(meta.len()));
            }
            return None;
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(meta.len() as usize).ok()?;
        (&file).take(meta.len()).read_to_end(&mut buf).ok()?;
        touch_if_stale(&file, &meta);
        Some(buf)
    }

    /// Bytes `range` of span `span` (of `len` bytes) read from its decoded prefix file by range, the rest of
    /// the file unread, when that file is sealed, shorter than the span and holds the range; `None` otherwise,
    /// and then the load path reads the whole file, or inflates the prefix again.
    pub(crate) fn get_part_range(&self, span: &Digest, len: u64, range: Range<u64>) -> Option<Vec<u8>> {
        if range.start > range.end {
            return None;
        }
        let file = fs::File::open(self.part_path(span)).ok()?;
        let meta = file.metadata().ok()?;
        if !is_sealed(&meta) || meta.len() >= len || meta.len() < range.end {
            return None;
        }
        let mut buf = vec![0; usize::try_from(range.end - range.start).ok()?];
        file.read_exact_at(&mut buf, range.start).ok()?;
        touch_if_stale(&file, &meta);
        Some(buf)
    }

    /// Whether span `span` was noted to have a decoded prefix file (by the scan at open, or written by this
    /// process): a cheap check, no file lookup, for whether [`DiskCache::get_part_range`] is worth trying.
    pub(crate) fn noted_part(&self, span: &Digest) -> bool {
        lock(&self.parts).contains(span)
    }

    /// Notes that span `span` has a decoded prefix file (see [`DiskCache::noted_part`]).
    pub(super) fn note_part(&self, span: &Digest) {
        let mut parts = lock(&self.parts);
        if parts.len() >= MAX_VERIFIED {
            parts.clear();
        }
        parts.insert(*span);
    }

    /// Whether a sealed decoded prefix file holds at least the first `upto` bytes of span `span` (a cheap
    /// check, as [`DiskCache::contains`] is for whole spans: a read still loads and checks it).
    pub(crate) fn holds_part(&self, span: &Digest, upto: u64) -> bool {
        fs::metadata(self.part_path(span)).is_ok_and(|m| m.is_file() && m.len() >= upto && is_sealed(&m))
    }

    /// Keeps `bytes`, the first decoded bytes of span `span` inflated from a checked prefix, as its decoded
    /// prefix file (replacing a shorter one), sealed once written; a failure is logged, never fatal.
    pub(crate) fn put_part(self: &Arc<Self>, span: &Digest, bytes: &[u8]) {
        let path = self.part_path(span);
        if self.put_longer(path.clone(), bytes) {
            self.seal(path);
            self.note_part(span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_kept_grown_counted_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 30).unwrap();
        cache.wait_scanned();
        let key = prefix_key(&Digest::of(b"layer"), 65536);
        assert_ne!(key, prefix_key(&Digest::of(b"layer"), 0), "the start is part of the name");
        assert!(cache.get_prefix(&key, 1 << 20).is_none());
        cache.put_prefix(&key, &[1u8; 5000]);
        assert_eq!(cache.stats().bytes, 8192);
        cache.put_prefix(&key, &[2u8; 100]);
        assert_eq!(cache.get_prefix(&key, 1 << 20).unwrap(), vec![1u8; 5000], "a shorter prefix replaced a longer");
        cache.put_prefix(&key, &[3u8; 9000]);
        assert_eq!(cache.get_prefix(&key, 1 << 20).unwrap(), vec![3u8; 9000]);
        assert_eq!(cache.stats().bytes, 12288, "the replaced file is no longer counted");
        assert!(cache.get_prefix(&key, 8999).is_none(), "a prefix longer than its span was served");
        assert_eq!(cache.stats().verify_failures, 1);
        assert_eq!(cache.stats().bytes, 0);
        cache.put_prefix(&key, &[4u8; 10]);
        let span = Digest::of(b"span");
        cache.put_part(&span, &[5u8; 100]);
        cache.remove_prefix(&key, &span);
        assert!(cache.get_prefix(&key, 1 << 20).is_none());
        assert!(cache.get_part(&span, 1 << 20).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn a_decoded_prefix_is_read_by_range_when_sealed_and_holding_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(DiskCache::open(dir.path(), 1 << 30).unwrap());
        cache.wait_scanned();
        let span = Digest::of(b"span");
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        assert!(!cache.noted_part(&span));
        cache.put_part(&span, &bytes); // no runtime: sealed before this returns
        assert!(cache.noted_part(&span), "a decoded prefix written here was not noted");
        assert_eq!(cache.get_part_range(&span, 1 << 20, 100..200).unwrap(), &bytes[100..200]);
        assert!(cache.get_part_range(&span, 1 << 20, 4000..5001).is_none(), "a range past the prefix was served");
        assert!(cache.get_part_range(&span, 5000, 0..10).is_none(), "a prefix as long as its span was served");

        // Another process learns of it from its scan at open.
        let other = DiskCache::open(dir.path(), 1 << 30).unwrap();
        other.wait_scanned();
        assert!(other.noted_part(&span), "the scan did not note a sealed decoded prefix");
        assert_eq!(other.get_part_range(&span, 1 << 20, 0..5000).unwrap(), bytes);

        // Unsealed: never served by range (the load path deletes it).
        let path = cache.part_path(&span);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(other.get_part_range(&span, 1 << 20, 0..10).is_none(), "an unsealed decoded prefix was served");
        let third = DiskCache::open(dir.path(), 1 << 30).unwrap();
        third.wait_scanned();
        assert!(!third.noted_part(&span), "the scan noted an unsealed decoded prefix");
    }

    #[test]
    fn a_decoded_prefix_is_served_only_sealed_and_shorter_than_its_span() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(DiskCache::open(dir.path(), 1 << 30).unwrap());
        cache.wait_scanned();
        let span = Digest::of(b"span");
        cache.put_part(&span, &[1u8; 5000]); // no runtime: sealed before this returns
        cache.put_part(&span, &[2u8; 100]);
        assert_eq!(cache.get_part(&span, 1 << 20).unwrap(), vec![1u8; 5000], "a shorter one replaced it");
        assert!(cache.get_part(&span, 5000).is_none(), "a decoded prefix as long as its span was served");
        assert!(!cache.part_path(&span).exists(), "an overlong decoded prefix was kept");

        // Unsealed (as a crash between the write and the seal leaves it): deleted, never served.
        cache.put_part(&span, &[3u8; 300]);
        let path = cache.part_path(&span);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(cache.get_part(&span, 1 << 20).is_none(), "an unsealed decoded prefix was served");
        assert!(!path.exists());
        assert_eq!(cache.stats().bytes, 0);
    }
}
