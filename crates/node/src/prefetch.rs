//! What a mount loads as it starts, before the first read asks ([`startup_spans`]): the spans of the
//! index's startup set (the entrypoint, its interpreter and libraries, found at index time), then the
//! spans of a recorded profile in the order the recorded start read them, each span once and only as far
//! into it as those files reach or that start read (a span's tail past them is not waited for). The list
//! goes to [`clip_store::ContentStore::prefetch_spans`], which loads them all concurrently; a span the
//! profile has a resume point for goes to [`clip_store::ContentStore::load_resumes`] instead
//! ([`startup_pieces`]). And while the
//! mount serves, what each program, library or Python module it opens is about to load ([`OpenPrefetch`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clip_format::{Archive, Ino, LayerIndex, NodeKind, NodeView, SpanId};
use clip_fs::OpenObserver;
use clip_image::StoreBytes;
use clip_indexer::startup::{start_files, starts_more};
use clip_store::{ContentStore, Need, Resume};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

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

/// The startup set a mount prefetches: the index's, unless `enabled` is false (none when it is unreadable,
/// which is logged).
pub fn mount_startup_set(archive: &Archive, enabled: bool) -> Vec<Ino> {
    if !enabled {
        return Vec::new();
    }
    archive.startup_set().unwrap_or_else(|error| {
        warn!(error = &error as &dyn std::error::Error, "the index's startup set is unreadable; not prefetching it");
        Vec::new()
    })
}

/// The spans to prefetch at mount, each with how much of it: those of the files of `startup_set` (in set
/// order, each up to [`STARTUP_FILE_MAX`] bytes, at most [`STARTUP_SPANS_MAX`] spans; a span a file ends in
/// only up to there), then `profile`'s that exist in `archive`; each span once, as far as any of them wants
/// it. Returns the list and how many came from the set.
pub fn startup_spans(
    archive: &Archive,
    startup_set: &[Ino],
    profile: Option<&Profile>,
) -> (Vec<(LayerIndex, SpanId, Need)>, usize) {
    let mut spans = SpanNeeds::default();
    'files: for &ino in startup_set {
        let Some(data) = archive.node(ino).ok().and_then(|n| n.data_ref()) else { continue };
        for slice in archive.file_spans(data, 0..STARTUP_FILE_MAX) {
            let Ok(slice) = slice else { break };
            if spans.list().len() >= STARTUP_SPANS_MAX {
                break 'files;
            }
            spans.add(data.layer, slice.span, Need::of_slice(&slice));
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

/// Splits what [`startup_spans`] listed: a span `profile` has a resume point for is loaded from there (a
/// piece of it, see [`clip_store::ContentStore::load_resumes`]), not from its start, unless `store` holds
/// as much of it as was wanted. Returns the spans left to prefetch and the resume points to load.
pub(crate) fn startup_pieces(
    store: &ContentStore,
    profile: Option<&Profile>,
    spans: Vec<(LayerIndex, SpanId, Need)>,
) -> (Vec<(LayerIndex, SpanId, Need)>, Vec<Resume>) {
    let mut resumes = profile.map(|p| p.resumes(store.archive())).unwrap_or_default();
    let held: HashSet<SpanId> =
        spans.iter().filter(|&&(_, span, need)| store.holds(span, need)).map(|&(_, span, _)| span).collect();
    resumes.retain(|r| !held.contains(&r.span));
    let resumed: HashSet<SpanId> = resumes.iter().map(|r| r.span).collect();
    (spans.into_iter().filter(|(_, span, _)| !resumed.contains(span)).collect(), resumes)
}

/// Files smaller than an ELF header are not looked at (nor is bytecode that small: it imports nothing).
const ELF_HEADER: u64 = 64;

/// Starts loading what each program, shared library or CPython module a mount opens is about to load, as
/// soon as it is opened ([`start_files`]): the dynamic linker opens a program's libraries one after another,
/// and Python its module's imports, each a round trip on a cold mount (a wait on the disk on a warm one),
/// while `start_files` finds them a level at a time (a level of the library closure, or of the import
/// closure) and each level loads concurrently: what is not local is fetched, what is is read into the page
/// cache ([`ContentStore::page_in`]). Each file is looked at once per mount, and not again when it is opened
/// after being found that way (while fewer than [`MAX_SEEN`] files have been: see [`Seen`]); the files of
/// the index's startup set not at all (what they load is in the set).
///
/// The first program opened also tells whether the index's startup set is the start that runs: when it is
/// not in the set (the container runs another command), the set's prefetch yields to reads from then on
/// instead of taking the link from them.
pub(crate) struct OpenPrefetch {
    store: Arc<ContentStore>,
    runtime: Handle,
    /// The index's startup set (empty when the mount does not prefetch it).
    startup_set: HashSet<Ino>,
    /// Whether a program has been opened yet.
    program_seen: AtomicBool,
    /// Files looked at, or found by looking at another.
    seen: Arc<Seen>,
    /// Searches that found files and ended (a metric).
    searches: Arc<AtomicU64>,
}

impl OpenPrefetch {
    /// Prefetches for the mount of `store`; `startup_set` is the set the mount prefetches (empty: none); each
    /// search that found files counts in `searches` as it ends.
    pub fn new(store: Arc<ContentStore>, runtime: Handle, startup_set: HashSet<Ino>, searches: Arc<AtomicU64>) -> Self {
        let program_seen = AtomicBool::new(false);
        OpenPrefetch { store, runtime, startup_set, program_seen, seen: Arc::default(), searches }
    }
}

impl OpenObserver for OpenPrefetch {
    fn on_open(&self, node: &NodeView) {
        if node.kind() != NodeKind::File || node.size < ELF_HEADER {
            return;
        }
        let executable = node.mode & 0o111 != 0;
        let in_set = self.startup_set.contains(&node.ino);
        let first_program = executable && !self.program_seen.swap(true, Ordering::Relaxed);
        if first_program && !self.startup_set.is_empty() && !in_set {
            info!(
                ino = node.ino.0,
                "the first program started is not in the startup set; its prefetch yields to reads"
            );
            self.store.yield_startup_prefetch();
        }
        if in_set || !self.seen.insert(node.ino) {
            return;
        }
        let (store, seen, ino) = (Arc::clone(&self.store), Arc::clone(&self.seen), node.ino);
        let searches = Arc::clone(&self.searches);
        self.runtime.spawn(async move {
            let archive = Arc::clone(store.archive());
            let Ok(path) = archive.path_of(ino) else { return };
            if !starts_more(&path, executable) {
                return;
            }
            let files = StoreBytes(Arc::clone(&store));
            let warm = |file: Ino| {
                seen.insert(file);
                if let Some(data) = archive.node(file).ok().and_then(|n| n.data_ref()) {
                    if !store.warm_file(data).cold {
                        store.page_in([data]);
                    }
                }
            };
            let shown = String::from_utf8_lossy(&path).into_owned();
            let found = start_files(&archive, &files, ino, path, Box::new(warm)).await;
            if found > 0 {
                debug!(path = %shown, files = found, "loading what the opened file loads next");
                searches.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Files [`OpenPrefetch`] remembers having looked at; past this many it starts over, so a mount opening every
/// file of an image of millions keeps at most ~0.3 MiB for them (a file forgotten may be looked at again).
const MAX_SEEN: usize = 1 << 16;

/// The files [`OpenPrefetch`] has looked at or found, at most [`MAX_SEEN`] of them.
#[derive(Default)]
pub(crate) struct Seen(Mutex<HashSet<Ino>>);

impl Seen {
    /// Records `ino`; false when it was recorded already.
    fn insert(&self, ino: Ino) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_SEEN && !seen.contains(&ino) {
            seen.clear();
            seen.shrink_to(MAX_SEEN / 16);
        }
        seen.insert(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_looked_at_are_remembered_up_to_a_bound() {
        let seen = Seen::default();
        assert!(seen.insert(Ino(7)) && !seen.insert(Ino(7)), "a file looked at once is looked at again");
        for i in 0..MAX_SEEN as u32 {
            seen.insert(Ino(1_000 + i));
        }
        let held = seen.0.lock().unwrap().len();
        assert!(held <= MAX_SEEN, "{held} files remembered");
        // The record started over: the first file is looked at again, once.
        assert!(seen.insert(Ino(7)) && !seen.insert(Ino(7)));
    }
}
