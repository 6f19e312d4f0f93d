//! What a mount loads as it starts, before the first read asks ([`startup_spans`]): the spans of the
//! index's startup set (the entrypoint, its interpreter and libraries, found at index time), then the
//! spans of a recorded profile in the order the recorded start read them, each span once and only as far
//! into it as those files reach or that start read (a span's tail past them is not waited for). The list
//! goes to [`clip_store::ContentStore::prefetch_spans`], which loads them all concurrently.

use std::collections::HashMap;

use clip_format::{Archive, LayerIndex, SpanId};
use clip_store::Need;
use tracing::warn;

use crate::Profile;

/// The most bytes of one startup file prefetched (from its start): a huge library is mapped, not read
/// whole, and must not hold up the rest.
pub const STARTUP_FILE_MAX: u64 = 64 << 20;
/// The most spans of the startup set prefetched.
pub const STARTUP_SPANS_MAX: usize = 1024;

/// Spans in the order they were first wanted, each once, with all that was wanted of it (a startup's list
/// to prefetch, and a recording of one).
#[derive(Default)]
pub(crate) struct SpanNeeds {
    order: Vec<(LayerIndex, SpanId, Need)>,
    at: HashMap<(LayerIndex, SpanId), usize>,
}

impl SpanNeeds {
    /// Wants `need` of `span` of `layer` too; returns whether that changed the list.
    pub fn add(&mut self, layer: LayerIndex, span: SpanId, need: Need) -> bool {
        match self.at.get(&(layer, span)) {
            Some(&i) => {
                let grown = self.order[i].2.max(need);
                std::mem::replace(&mut self.order[i].2, grown) != grown
            }
            None => {
                self.at.insert((layer, span), self.order.len());
                self.order.push((layer, span, need));
                true
            }
        }
    }

    /// Whether `span` of `layer` is in the list.
    pub fn contains(&self, layer: LayerIndex, span: SpanId) -> bool {
        self.at.contains_key(&(layer, span))
    }

    /// The spans, first wanted first.
    pub fn list(&self) -> &[(LayerIndex, SpanId, Need)] {
        &self.order
    }
}

/// The spans to prefetch at mount, each with how much of it: the startup set's when `startup_set` (files
/// in set order, each up to [`STARTUP_FILE_MAX`] bytes, at most [`STARTUP_SPANS_MAX`] spans; a span a file
/// ends in only up to there), then `profile`'s that exist in `archive`; each span once, as far as any of
/// them wants it. Returns the list and how many came from the set.
pub fn startup_spans(
    archive: &Archive,
    startup_set: bool,
    profile: Option<&Profile>,
) -> (Vec<(LayerIndex, SpanId, Need)>, usize) {
    let mut spans = SpanNeeds::default();
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
                if spans.list().len() >= STARTUP_SPANS_MAX {
                    break 'files;
                }
                spans.add(data.layer, slice.span, Need::of_slice(&slice));
            }
        }
    }
    let from_set = spans.list().len();
    if let Some(profile) = profile {
        for (layer, span, need) in profile.valid_spans(archive) {
            spans.add(layer, span, need);
        }
    }
    (spans.order, from_set)
}
