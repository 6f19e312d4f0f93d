//! The `.clip` file format: one versioned, little-endian, checksummed container for both archive kinds.
//!
//! - [`write_index`] / [`write_archive`] turn an [`IndexContents`] (inodes as [`NodeSpec`], the span table,
//!   [`ImageMeta`], the checkpoint windows as [`Windows`]) into bytes, deterministically. Windows are
//!   compressed as they are added and spill to a temporary file, so an indexer's memory does not grow with
//!   the layer size.
//! - [`Archive::open`] maps a file and checks header, section table and checksums only; [`Archive::node`],
//!   [`Archive::lookup`] (binary search, O(log n)) and [`Archive::children`] (O(children)) decode records
//!   on access.
//!
//! - [`Archive::startup_set`]: the files the image's entrypoint opens first (the optional `STRT` section),
//!   and [`Archive::next_files`]: what opening a file loads next (the optional `NEXT` section), both added
//!   to a written index by [`Archive::write_with_startup`].
//! - [`LayerPart`]: the index of one layer on its own (tar entries, spans, windows), content-addressed so
//!   images that share a layer share its part; image indexes are merged from parts.
//!
//! The byte layout is documented in [`layout`]. This crate does no network I/O and has no async.
//!
//! ```
//! use clip_format::*;
//! let root = NodeSpec { mode: mode::S_IFDIR | 0o755, uid: 0, gid: 0, mtime: Timestamp::default(),
//!     xattrs: vec![], content: Content::Dir(vec![(b"hello".to_vec(), Ino(2))]) };
//! let file = NodeSpec { mode: mode::S_IFREG | 0o644, uid: 0, gid: 0, mtime: Timestamp::default(),
//!     xattrs: vec![], content: Content::File(DataRef { layer: LayerIndex(0), offset: 512, size: 5 }) };
//! // The file's bytes lie in layer 0: a 1 KiB tar, stored uncompressed, with one span.
//! let layer = LayerMeta { media_type: "application/vnd.oci.image.layer.v1.tar".into(),
//!     digest: Digest::of(b"layer"), size: 1024, diff_id: None,
//!     uncompressed_size: 1024, compression: Compression::None, first_span: SpanId(0), span_count: 1 };
//! let span = SpanSpec { out_offset: 0, in_offset: 0, bits: 0, digest: Digest::default(), window: WindowRef::default() };
//! let contents = IndexContents { kind: ArchiveKind::IndexOnly,
//!     meta: ImageMeta { layers: vec![layer], ..ImageMeta::default() }, nodes: vec![root, file], spans: vec![span],
//!     windows: Windows::new(), chunks: None, tree: None };
//! let mut bytes = Vec::new();
//! write_index(&contents, &mut bytes).unwrap();
//! let archive = Archive::from_bytes(bytes).unwrap();
//! let ino = archive.resolve(b"/hello").unwrap().unwrap();
//! assert_eq!(archive.node(ino).unwrap().size, 5);
//! ```

mod check;
mod chunks;
mod error;
mod ids;
mod input;
pub mod layout;
mod meta;
mod node;
pub mod part;
mod reader;
mod spill;
mod tables;
mod windows;
mod writer;

pub use check::MAX_SIZE;
pub use chunks::{
    leaf_digests, ChunkDigest, ChunkTable, Chunks, LeafDigest, SpanChunks, SpanRoot, CHUNK_DIGEST_LEN, CHUNK_SIZE,
    ROOT_LEN, TREE_LEAF,
};
pub use error::{Corruption, FormatError};
pub use ids::{Digest, LayerIndex, SpanId, SpanIds};
pub use input::{file_type_name, open_regular};
pub use layout::{ArchiveKind, SectionEntry};
pub use meta::{Compression, ImageConfig, ImageMeta, LayerMeta, Platform};
pub use node::{mode, Content, DataRef, Ino, NodeKind, NodeSpec, Timestamp, Xattr};
pub use part::{
    index_part_keys, part_key, ElfNames, EntryKind, LayerPart, LoaderCache, ModuleImport, ModuleImports, PartEntries,
    PartEntriesIntoIter, PartLoads, PartMeta, ScriptLine, TarEntry, MAX_SCRIPT_LINE, PART_VERSION,
};
pub use reader::{
    Archive, Next, NextFiles, NodeView, RangeReader, SpanSlice, SpanView, XattrRef, MAX_NEXT_EDGES, MAX_STARTUP_FILES,
};
pub use tables::{NodeRecord, RecordContent, TreeTables};
pub use windows::{encode_window, WindowRef, Windows, MAX_WINDOW};
pub use writer::{write_archive, write_index, DataSource, IndexContents, SpanSpec};
