//! Reading the local copies of files into the kernel's page cache ahead of a start over a warm disk cache
//! ([`ContentStore::page_in`]): a program loads its libraries and modules one after another, each read a
//! wait on the disk, while these are queued at once, a few files at a time, in the order asked.

use std::collections::VecDeque;
use std::sync::Arc;

use clip_format::DataRef;
use tokio::runtime::Handle;

use crate::cache::will_need;
use crate::materialize::{file_key, file_parts};
use crate::stats::Counters;
use crate::store::Inner;
use crate::{lock, ContentStore};

/// Files [`ContentStore::page_in`] reads at once.
const PAGE_IN_WORKERS: usize = 4;
/// The most files waiting for [`ContentStore::page_in`]; more are not read ahead.
const PAGE_IN_QUEUE_MAX: usize = 4096;
/// The most bytes of one file [`ContentStore::page_in`] reads (from its start): a huge library is mapped,
/// not read whole.
const PAGE_IN_FILE_MAX: u64 = 64 << 20;
/// The most bytes one store reads ahead in all: a start reads tens of MB, and an index whose closures name
/// every big file of a full disk cache does not get it all read in.
const PAGE_IN_BYTES_MAX: u64 = 1 << 30;

/// The files waiting for [`ContentStore::page_in`], how many workers are taking them, and the bytes read
/// ahead so far.
#[derive(Default)]
pub(crate) struct Paging {
    files: VecDeque<DataRef>,
    workers: usize,
    bytes: u64,
}

impl Paging {
    /// The next file for a worker; `None` ends the worker (none left, or [`PAGE_IN_BYTES_MAX`] read: then
    /// those left are dropped).
    fn next(&mut self) -> Option<DataRef> {
        if self.bytes >= PAGE_IN_BYTES_MAX {
            self.files.clear();
        }
        let next = self.files.pop_front();
        if next.is_none() {
            self.workers -= 1;
        }
        next
    }
}

impl ContentStore {
    /// Starts reading into the kernel's page cache, in the background, the local copies of those of `files`
    /// whose bytes are all in the disk cache, each from where a read will take it (its passthrough copy,
    /// else its span files or decoded prefixes), the first files first, [`PAGE_IN_WORKERS`] at a time.
    /// For a start over a warm disk cache: a program loads its libraries and modules one after another,
    /// each a wait on the disk, while these reads are queued at once. Files not local are left to the
    /// fetches; nothing is read without a disk cache or a tokio runtime, nor past [`PAGE_IN_BYTES_MAX`] in all.
    pub fn page_in(&self, files: impl IntoIterator<Item = DataRef>) {
        let inner = &self.inner;
        let Some(rt) = Handle::try_current().ok().or_else(|| inner.runtime.clone()) else { return };
        if inner.disk.is_none() {
            return;
        }
        let start = {
            let mut paging = lock(&inner.paging);
            let room = PAGE_IN_QUEUE_MAX.saturating_sub(paging.files.len());
            paging.files.extend(files.into_iter().take(room));
            let start = PAGE_IN_WORKERS.saturating_sub(paging.workers).min(paging.files.len());
            paging.workers += start;
            start
        };
        for _ in 0..start {
            let inner = Arc::clone(inner);
            rt.spawn_blocking(move || loop {
                let Some(data) = lock(&inner.paging).next() else { break };
                if page_in_file(&inner, data) {
                    Counters::bump(&inner.counters.files_paged_in);
                    lock(&inner.paging).bytes += data.size.min(PAGE_IN_FILE_MAX);
                }
            });
        }
    }
}

/// [`ContentStore::page_in`] of one file, blocking: whether its bytes were all local.
fn page_in_file(inner: &Inner, data: DataRef) -> bool {
    let Some(disk) = inner.disk.as_ref() else { return false };
    let Ok(parts) = file_parts(&inner.archive, data) else { return false };
    if data.size >= inner.config.passthrough_min {
        if let Some(file) = disk.find_file(&file_key(&parts, data.size), data.size) {
            will_need(&file, 0..data.size.min(PAGE_IN_FILE_MAX));
            return true;
        }
    }
    let mut left = PAGE_IN_FILE_MAX;
    for p in &parts {
        if left == 0 {
            break;
        }
        let to = p.to.min(p.from + left);
        if !disk.page_in_span(&p.digest, p.span_len, p.from..to) {
            return false;
        }
        left -= to - p.from;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use clip_format::LayerIndex;

    #[test]
    fn workers_take_files_in_order_until_the_bytes_read_reach_the_bound() {
        let file = |offset| DataRef { layer: LayerIndex(0), offset, size: 10 };
        let mut paging = Paging { files: (0..3).map(file).collect(), workers: 2, bytes: 0 };
        assert_eq!(paging.next(), Some(file(0)));
        paging.bytes = PAGE_IN_BYTES_MAX - 1;
        assert_eq!(paging.next(), Some(file(1)));
        paging.bytes = PAGE_IN_BYTES_MAX;
        assert_eq!(paging.next(), None, "a file past the bound was handed out");
        assert!(paging.files.is_empty());
        assert_eq!(paging.next(), None);
        assert_eq!(paging.workers, 0, "each worker told to end is counted out once");
    }
}
