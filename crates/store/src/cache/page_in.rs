//! Asking the kernel to read cached bytes into its page cache ahead of the reads that will want them
//! (`posix_fadvise(POSIX_FADV_WILLNEED)`): the request returns once the reads are queued, and the disk serves
//! many at once, where a starting program would have waited on them one after another.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;

use clip_format::Digest;

use super::files::Form;
use super::seal::is_sealed;
use super::DiskCache;

impl DiskCache {
    /// Starts reading bytes `range` of the `span_len`-byte span `span` into the page cache from where this
    /// cache holds them: its span file (a compressed one whole: its frames are what a read inflates) or its
    /// sealed decoded prefix file. False when neither holds them (nothing is read).
    pub(crate) fn page_in_span(&self, span: &Digest, span_len: u64, range: Range<u64>) -> bool {
        if let Some(file) = self.open_span(span) {
            match file.form {
                Form::Raw if file.meta.len() == span_len => will_need(&file.file, range),
                Form::Raw => return false,
                Form::Compressed => will_need(&file.file, 0..file.meta.len()),
            }
            return true;
        }
        let Ok(file) = File::open(self.part_path(span)) else { return false };
        if !file.metadata().is_ok_and(|m| is_sealed(&m) && m.len() >= range.end && m.len() < span_len) {
            return false;
        }
        will_need(&file, range);
        true
    }
}

/// Asks the kernel to start reading `range` of `file` into the page cache. Advice only: a failure changes
/// nothing but speed, and is ignored.
pub(crate) fn will_need(file: &File, range: Range<u64>) {
    let (Ok(offset), Ok(len)) = (i64::try_from(range.start), i64::try_from(range.end.saturating_sub(range.start)))
    else {
        return;
    };
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open for the call's duration (`file`
    // is borrowed), and any offset or length is valid input (the kernel clamps them to the file).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED);
    }
}
