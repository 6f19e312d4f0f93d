//! Prefix files: the compressed bytes of a span's prefix that a partial fetch brought (see
//! `crate::partial`), kept so that a later process (a remount over a warm cache) serves reads of that
//! prefix without fetching it again, and fetches only the rest when it needs more.
//!
//! `prefixes/ab/KEY`, where KEY names the layer blob and the chunk boundary the bytes start at
//! ([`prefix_key`]): a prefix is bytes of one compressed stream, so it is shared only by layers with the same
//! blob, unlike a span file (named by the decoded bytes). A prefix file is never trusted as it is: whoever
//! loads it checks every chunk against the index's compressed-chunk digests before decoding it, and deletes
//! it when a check fails ([`DiskCache::reject`]). Once the whole span is on disk its prefix file is removed.

use clip_format::Digest;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::{on_disk, touch, DiskCache};

pub(crate) const PREFIXES_DIR: &str = "prefixes";

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
        let len = bytes.len() as u64;
        if len > self.limit / 8 {
            return;
        }
        let path = self.prefix_path(key);
        let old = fs::metadata(&path).map_or(0, |m| m.len());
        if old >= len {
            return;
        }
        if self.write_file(&path, bytes) {
            self.forget(on_disk(old));
            self.added(on_disk(len));
        }
    }

    /// Removes prefix file `key` (its whole span is on disk now).
    pub(crate) fn remove_prefix(&self, key: &Digest) {
        let path = self.prefix_path(key);
        if let Ok(m) = fs::metadata(&path) {
            if fs::remove_file(&path).is_ok() {
                self.forget(on_disk(m.len()));
            }
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
        cache.remove_prefix(&key);
        assert!(cache.get_prefix(&key, 1 << 20).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }
}
