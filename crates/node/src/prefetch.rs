//! What a mount loads as it starts, before the first read asks ([`startup_spans`]): the spans of the
//! index's startup set (the entrypoint, its interpreter and libraries, found at index time), then the
//! spans of a recorded profile in the order the recorded start read them, each span once. The list goes
//! to [`clip_store::ContentStore::prefetch_spans`], which loads them all concurrently.

use std::collections::HashSet;

use clip_format::{Archive, LayerIndex, SpanId};
use tracing::warn;

use crate::Profile;

/// The most bytes of one startup file prefetched (from its start): a huge library is mapped, not read
/// whole, and must not hold up the rest.
pub const STARTUP_FILE_MAX: u64 = 64 << 20;
/// The most spans of the startup set prefetched.
pub const STARTUP_SPANS_MAX: usize = 1024;

/// The spans to prefetch at mount: the startup set's when `startup_set` (files in set order, each up to
/// [`STARTUP_FILE_MAX`] bytes, at most [`STARTUP_SPANS_MAX`] spans), then `profile`'s that exist in
/// `archive`; each span once. Returns the list and how many came from the set.
pub fn startup_spans(
    archive: &Archive,
    startup_set: bool,
    profile: Option<&Profile>,
) -> (Vec<(LayerIndex, SpanId)>, usize) {
    let mut seen = HashSet::new();
    let mut spans = Vec::new();
    if startup_set {
        let set = archive.startup_set().unwrap_or_else(|error| {
            warn!(
                error = &error as &dyn std::error::Error,
                "the index's startup set is unreadable; not prefetching it"
            );
            Vec::new()
        });
        'files: for ino in set {
            let Some(data) = archive.node(ino).ok().and_then(|n| n.data_ref()) else { continue };
            for slice in archive.file_spans(data, 0..STARTUP_FILE_MAX) {
                let Ok(slice) = slice else { break };
                if spans.len() >= STARTUP_SPANS_MAX {
                    break 'files;
                }
                if seen.insert((data.layer, slice.span)) {
                    spans.push((data.layer, slice.span));
                }
            }
        }
    }
    let from_set = spans.len();
    if let Some(profile) = profile {
        spans.extend(profile.valid_spans(archive).into_iter().filter(|s| seen.insert(*s)));
    }
    (spans, from_set)
}
