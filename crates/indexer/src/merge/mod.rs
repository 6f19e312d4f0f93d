//! The OCI layer merge: applies each layer's tar entries, in order, to one in-memory tree with the exact
//! semantics of `umoci unpack` (its `oci/layer/tar_extract.go` is the model), then hands the merged tree to
//! the format writer as [`NodeSpec`]s.
//!
//! What that means, entry by entry:
//! - `D/.wh.NAME` removes `D/NAME` and everything below it — except what this same layer extracted (then
//!   only the lower-layer parts below it go). `D/.wh..wh..opq` removes everything under `D` that this layer
//!   did not extract or pass through: a lower subtree goes whole; a directory this layer re-declared stays,
//!   minus its lower children. Whiteout files are not entries themselves; a missing target is fine.
//! - Symlinks in the directory part of a path are followed, scoped to the image root; the last component
//!   never is.
//! - A directory over a directory updates mode, owner, mtime and xattrs and keeps the children; anything
//!   else first removes what is there (only that name, for a hard-linked inode).
//! - Missing parent directories are created as `MkdirAll` does (0o755, root, mtime 0); a non-directory in
//!   the way is an error.
//! - A hard link names the inode currently at its target (from any layer); a missing or directory target is
//!   an error. Hard links carry no attributes of their own.
//! - xattrs that `umoci` never sets (`security.selinux`, `system.nfs4_acl`, `trusted.overlay.*` internals)
//!   are dropped; symlinks always have mode 0o777.
//!
//! # Layer views
//! [`Merger::with_views`] also makes each layer's own tree as overlayfs takes it in a lower directory (a
//! whiteout as a character device 0/0, an opaque directory with `trusted.overlay.opaque=y`), so that overlay
//! over the views of layers `0..=n` equals the tree merged from them. See `view.rs` for what a view holds.
//!
//! Nothing recurses, so hostile depth or width cannot overflow the stack; memory is proportional to the
//! number of entries.
//!
//! ```
//! use clip_indexer::merge::Merger;
//! use clip_indexer::tar::TarReader;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layers: Vec<Vec<u8>> = vec![vec![0; 1024]]; // uncompressed layer tars, bottom first
//! let mut merger = Merger::new();
//! for (index, bytes) in layers.iter().enumerate() {
//!     let entries = TarReader::new(&bytes[..]).collect::<Result<Vec<_>, _>>()?;
//!     merger.apply_layer(clip_format::LayerIndex::from_index(index), entries)?;
//! }
//! let nodes = merger.finish(); // nodes[0] is the root directory
//! assert_eq!(nodes.len(), 1);
//! # Ok(()) }
//! ```

mod apply;
mod dir;
mod finish;
mod resolve;
#[cfg(test)]
mod tests;
mod tree;
mod view;

use clip_format::{LayerIndex, NodeSpec};

use crate::tar::{EntryKind, TarEntry};
use tree::Tree;
pub use view::OPAQUE_XATTR;

/// Why a layer could not be applied. Paths are shown lossily; `layer` is the layer index.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("layer {layer}: entry path {path:?} is not normalized (empty, '.' or '..' component, or absolute)")]
    InvalidPath { layer: LayerIndex, path: String },
    #[error("layer {layer}: {path:?} has a name longer than 255 bytes, which no Linux file system accepts")]
    NameTooLong { layer: LayerIndex, path: String },
    #[error("layer {layer}: the root directory entry is a {kind:?}: the layer is malformed or hostile")]
    RootNotDir { layer: LayerIndex, kind: EntryKind },
    #[error("layer {layer}: cannot create {path:?}: {component:?} is not a directory")]
    NotADirectory { layer: LayerIndex, path: String, component: String },
    #[error("layer {layer}: hard link {path:?} points to {target:?}, which does not exist (yet)")]
    HardLinkTargetMissing { layer: LayerIndex, path: String, target: String },
    #[error("layer {layer}: hard link {path:?} points to {target:?}, which is a directory")]
    HardLinkToDirectory { layer: LayerIndex, path: String, target: String },
    #[error("layer {layer}: symlink {path:?} has an empty target, a NUL byte or more than 4095 bytes")]
    BadSymlinkTarget { layer: LayerIndex, path: String },
    #[error("layer {layer}: {path:?} is a whiteout without a valid name: the layer is malformed or hostile")]
    BadWhiteout { layer: LayerIndex, path: String },
    #[error("layer {layer}: resolving {path:?} follows more than 255 symlinks (a symlink loop)")]
    SymlinkLoop { layer: LayerIndex, path: String },
    #[error("layer {layer}: resolving {path:?} expands symlinks to an absurd length: the layer is hostile")]
    ResolutionTooLong { layer: LayerIndex, path: String },
    #[error("layer {layer}: the image has more than 2^32 - 2 inodes")]
    TooManyNodes { layer: LayerIndex },
}

/// Merges the layers of one image. See the [module docs](self).
pub struct Merger {
    tree: Tree,
    /// Generation of the layer being applied; a directory entry whose `upper` equals it was extracted (or
    /// passed through) by this layer.
    generation: u32,
    /// With [`Merger::with_views`]: the record of the layer being applied.
    record: Option<view::LayerRecord>,
    /// With [`Merger::with_views`]: the view of each layer applied so far.
    views: Vec<Vec<NodeSpec>>,
}

impl Default for Merger {
    fn default() -> Self {
        Merger::new()
    }
}

impl Merger {
    /// An empty image: just the root directory (0o755, root-owned, mtime 0).
    pub fn new() -> Self {
        Merger { tree: Tree::new(), generation: 0, record: None, views: Vec::new() }
    }

    /// A merger that also makes each layer's view (see [Layer views](self#layer-views)) as it applies the layer:
    /// take them with [`Merger::finish_with_views`]. Layers must then be applied with
    /// [`Merger::apply_layer`].
    pub fn with_views() -> Self {
        Merger { record: Some(view::LayerRecord::default()), ..Merger::new() }
    }

    /// Start applying layer `layer` (the index stored in file [`clip_format::DataRef`]s); feed its entries in
    /// stream order to [`LayerMerge::apply`].
    pub fn layer(&mut self, layer: LayerIndex) -> LayerMerge<'_> {
        // 0 marks "never extracted"; 2^32 layers wrap around harmlessly enough to not matter.
        self.generation = self.generation.wrapping_add(1).max(1);
        LayerMerge { merger: self, layer }
    }

    /// Apply one layer's entries (in stream order). `layer` is the layer index stored in file DataRefs.
    pub fn apply_layer(
        &mut self,
        layer: LayerIndex,
        entries: impl IntoIterator<Item = TarEntry>,
    ) -> Result<(), MergeError> {
        let recording = self.record.is_some();
        if recording {
            self.tree.hold_freed();
        }
        let mut merge = self.layer(layer);
        for entry in entries {
            merge.apply(entry)?;
        }
        if let Some(record) = self.record.take() {
            self.views.push(view::build(&self.tree, self.generation, &record));
            self.record = Some(view::LayerRecord::default());
            self.tree.release_held();
        }
        Ok(())
    }

    /// Live inodes, the root included.
    pub fn len(&self) -> usize {
        self.tree.live()
    }

    /// Never true: the root directory always exists.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The merged tree: element 0 is the root, then breadth-first by name bytes, each inode once (a
    /// hard-link group is one element named by several directory entries); element `i` is
    /// [`clip_format::Ino::from_index`]`(i)`. The same layers always give the same vector.
    pub fn finish(self) -> Vec<NodeSpec> {
        finish::finish(self.tree)
    }

    /// The merged tree (as [`Merger::finish`]) encoded straight into the index's tables: each inode is taken
    /// out of the tree as it is encoded, so a big image's inodes are never held twice.
    pub fn encode(self) -> Result<clip_format::TreeTables, clip_format::FormatError> {
        finish::encode(self.tree)
    }

    /// The merged tree (as [`Merger::finish`]) and, for a merger made [`Merger::with_views`], each layer's
    /// view in the same form: element 0 its root, a whiteout a character device 0/0, an opaque directory with
    /// the xattr [`OPAQUE_XATTR`] = `y`.
    pub fn finish_with_views(self) -> (Vec<NodeSpec>, Vec<Vec<NodeSpec>>) {
        (finish::finish(self.tree), self.views)
    }
}

/// Applies the entries of one layer; made by [`Merger::layer`].
pub struct LayerMerge<'a> {
    merger: &'a mut Merger,
    layer: LayerIndex,
}

impl LayerMerge<'_> {
    /// Apply the next entry of this layer.
    pub fn apply(&mut self, entry: TarEntry) -> Result<(), MergeError> {
        let m = &mut *self.merger;
        apply::apply(&mut m.tree, m.generation, self.layer, entry, m.record.as_mut())
    }
}
