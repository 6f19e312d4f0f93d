//! The content store: maps file reads to verified spans, fetched once and kept in a bounded disk cache.
//!
//! - [`LayerBlobs`]: where a layer's compressed bytes come from ([`SourceBlobs`] for index-only archives:
//!   the image's registry or OCI layout; [`LocalData`] for a data-carrying archive on local disk).
//! - [`ContentStore`]: `read(file, offset, len)` → the spans it covers, each looked up in memory, then in
//!   the [`DiskCache`], then fetched with one range read, decoded from its checkpoint and verified against
//!   its digest before any byte is served or cached. Concurrent readers of one span share one fetch.
//!   Sequential reads load the next spans ahead; [`ContentStore::prefetch_all`] fills the disk cache in the
//!   background; [`ContentStore::load_resumes`] loads the pieces a recorded profile's resume points give
//!   (bytes from inside a span, checked against its tree root); [`ContentStore::cached_file`] hands out whole cached files for FUSE passthrough, and
//!   [`ContentStore::page_in`] reads cached files into the page cache ahead of a start.
//! - [`DiskCache`]: spans on disk named by their sha256, shared by all processes on the machine, bounded
//!   with LRU eviction, written atomically and verified when read.
//! - [`RemoteSpanCache`]: an optional second tier shared by a fleet (e.g. an S3 bucket), asked after the
//!   disk cache and before the source, and filled in the background with what the source served.
//! - [`StoreConfig`]: how a store behaves; its [`Clock`] times the failure hold-off and the tier's backoff
//!   ([`ManualClock`] lets tests step past them). A failure shared by concurrent readers stays typed
//!   ([`StoreError::Joined`], [`StoreError::Shared`]; [`StoreError::cause`] reaches it).
//!
//! ```no_run
//! # async fn demo(archive: std::sync::Arc<clip_format::Archive>,
//! #     blobs: std::sync::Arc<dyn clip_store::LayerBlobs>, file: clip_format::DataRef) -> Result<(), clip_store::StoreError> {
//! use clip_store::{default_cache_dir, ContentStore, StoreConfig};
//! let config = StoreConfig { cache_dir: Some(default_cache_dir()), ..StoreConfig::default() };
//! let store = ContentStore::new(archive, blobs, config);
//! let head = store.read(file, 0, 4096).await?;
//! println!("{} bytes, {} spans fetched", head.len(), store.stats().spans_fetched);
//! # Ok(()) }
//! ```
//!
//! This crate knows no FUSE and no CLI.

mod blobs;
mod cache;
mod config;
mod error;
mod fetch;
mod flight;
mod materialize;
mod memory;
mod page_in;
mod partial;
mod remote;
mod resume;
mod schedule;
mod stats;
mod store;

pub use blobs::{LayerBlobs, LocalData, SourceBlobs};
pub use cache::{default_cache_dir, private_dir, share_disk_caches, CacheStats, DiskCache, Evicted};
pub use clip_codec::ResumePoint;
pub use clip_source::error_chain;
pub use config::{failure_holdoff, Clock, ManualClock, StoreConfig, SystemClock, VERIFY_ATTEMPTS};
pub use error::StoreError;
pub use partial::Need;
pub use remote::{RemoteSpanCache, RemoteTier, TIER_BACKOFF, TIER_WARN_EVERY};
pub use resume::{Resume, PIECES_MAX, RESUME_MIN};
pub use schedule::{PrefetchSummary, Warmed};
pub use stats::{LatencyHistogram, StoreStats, FETCH_LATENCY_BOUNDS_MS};
pub use store::{ContentStore, SpanBytes};

/// Locks `m`, carrying on after a panic elsewhere poisoned it (the guarded state stays consistent).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
