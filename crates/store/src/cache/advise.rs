//! Page-cache hints: asking the kernel to read cache files into its page cache ahead of the reads that will
//! want them, in the background and many at once, so that a program starting over a warm cache (its exec,
//! its libraries, its first reads) does not wait on the disk for one fault after another. Hints only:
//! nothing here is served, checked or counted, and a hint that fails costs nothing but the wait it would
//! have saved.

use clip_format::Digest;
use std::fs::File;
use std::ops::Range;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use tracing::debug;

use super::{DiskCache, Form};

impl DiskCache {
    /// Starts reading bytes `range` of the span `digest` into the page cache: from its span file (all of a
    /// compressed one, whose frames a read inflates), else from its decoded prefix file. Says whether there
    /// was a file to read.
    pub(crate) fn advise_span(&self, digest: &Digest, range: Range<u64>) -> bool {
        if let Some(span) = self.open_span(digest) {
            will_need(&span.file, if span.form == Form::Raw { range } else { 0..span.meta.len() });
            return true;
        }
        if !self.noted_part(digest) {
            return false;
        }
        File::open(self.part_path(digest)).map(|file| will_need(&file, range)).is_ok()
    }
}

/// Asks the kernel to read `range` of `file` into its page cache in the background.
pub(crate) fn will_need(file: &File, range: Range<u64>) {
    let (Ok(offset), Ok(len)) = (i64::try_from(range.start), i64::try_from(range.end.saturating_sub(range.start)))
    else {
        return;
    };
    if let Err(error) = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED) {
        debug!(%error, "page-cache hint refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_span_or_a_noted_prefix_is_advised_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(DiskCache::open(dir.path(), 1 << 30).unwrap());
        cache.wait_scanned();
        let bytes = vec![7u8; 100_000];
        let span = Digest::of(&bytes);
        assert!(!cache.advise_span(&span, 0..4096), "nothing on disk yet");
        cache.put_part(&span, &bytes[..5000]);
        assert!(cache.advise_span(&span, 0..4096), "the decoded prefix was not found");
        cache.put(&span, &bytes);
        assert!(cache.advise_span(&span, 4096..8192), "the span file was not found");
    }
}
