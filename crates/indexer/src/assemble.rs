//! From layer parts to an index: the merged tree (what `clip mount` serves) or the layer views (each layer's
//! own tree, as overlayfs and containerd take a lower directory), over the parts' spans and windows. The span
//! table is the same whichever tree is built, so every tree of one image shares its cached spans.

use clip_format::{mode, Digest, LayerIndex, SpanId, SpanSpec, Timestamp, WindowRef, Windows};
use clip_format::{ArchiveKind, Chunks, Content, ImageMeta, IndexContents, Ino, LayerMeta, LayerPart, NodeSpec};

use crate::merge::Merger;
use crate::IndexError;

/// Which tree an index built from parts holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeKind {
    /// All layers merged (`umoci unpack`'s tree).
    Merged,
    /// Every layer's view, each in its own directory of the root named by [`layer_dir_name`].
    Layers,
    /// One layer's view (index into the layers, bottom first) as the root.
    Layer(usize),
}

/// The directory of layer `index` in a [`TreeKind::Layers`] tree: `<index>-sha256-<hex>` (no `:`, which
/// overlayfs takes as the separator of `lowerdir`).
pub fn layer_dir_name(index: usize, digest: &Digest) -> String {
    format!("{index}-{}", digest.dashed())
}

/// Builds an index of `tree` from `parts` (all layers of the image, bottom first). `base` is the image's
/// metadata without the layer table (made here from the parts); `media_types[i]` is layer `i`'s media type.
pub fn assemble(
    mut base: ImageMeta,
    media_types: &[String],
    parts: Vec<LayerPart>,
    tree: TreeKind,
) -> Result<IndexContents, IndexError> {
    let views = !matches!(tree, TreeKind::Merged);
    let mut merger = if views { Merger::with_views() } else { Merger::new() };
    let last = match tree {
        TreeKind::Layer(n) if n >= parts.len() => {
            return Err(IndexError::NoSuchLayer { layer: n, layers: parts.len() })
        }
        TreeKind::Layer(n) => n,
        _ => parts.len().saturating_sub(1),
    };
    let mut layers = Vec::with_capacity(parts.len());
    let mut spans = Vec::new();
    let mut windows = Windows::new();
    // Chunk digests only when every part has them, all of one chunk size.
    let mut chunks = parts.first().and_then(|p| p.chunks.as_ref()).map(|c| Chunks::new(c.chunk_size));
    for (i, part) in parts.into_iter().enumerate() {
        if !part.chunks.as_ref().is_some_and(|c| chunks.as_mut().is_some_and(|all| all.append(c))) {
            chunks = None;
        }
        let layer = LayerIndex::from_index(i);
        if i <= last {
            let mut entries = part.entries.into_iter();
            merger.apply_layer(layer, entries.by_ref()).map_err(|source| IndexError::Merge { layer, source })?;
            if let Some(source) = entries.take_error() {
                return Err(IndexError::Entries { layer, source });
            }
        }
        layers.push(LayerMeta {
            media_type: media_types.get(i).cloned().unwrap_or_default(),
            digest: part.meta.digest,
            size: part.meta.size,
            diff_id: Some(part.meta.diff_id),
            uncompressed_size: part.meta.uncompressed_size,
            compression: part.meta.compression,
            first_span: SpanId::from_index(spans.len()),
            span_count: part.spans.len() as u32,
        });
        let base = windows.append(&part.windows).map_err(|source| IndexError::Windows { layer, source })?;
        spans.extend(
            part.spans
                .into_iter()
                .map(|s| SpanSpec { window: WindowRef { offset: s.window.offset + base, ..s.window }, ..s }),
        );
    }
    let (nodes, tree) = match tree {
        TreeKind::Merged => (Vec::new(), Some(merger.encode().map_err(IndexError::Encode)?)),
        TreeKind::Layer(n) => (merger.finish_with_views().1.swap_remove(n), None),
        TreeKind::Layers => {
            let names: Vec<String> = layers.iter().enumerate().map(|(i, l)| layer_dir_name(i, &l.digest)).collect();
            (side_by_side(names, merger.finish_with_views().1), None)
        }
    };
    base.layers = layers;
    Ok(IndexContents { kind: ArchiveKind::IndexOnly, meta: base, nodes, spans, windows, chunks, tree })
}

/// One tree holding each of `trees` as the root's directory `names[i]` (0o755, root-owned, mtime 0).
fn side_by_side(names: Vec<String>, trees: Vec<Vec<NodeSpec>>) -> Vec<NodeSpec> {
    let mut nodes = vec![NodeSpec {
        mode: mode::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        xattrs: Vec::new(),
        content: Content::Dir(Vec::new()),
    }];
    let mut roots = Vec::with_capacity(trees.len());
    for (name, tree) in names.into_iter().zip(trees) {
        let offset = nodes.len();
        roots.push((name.into_bytes(), Ino::from_index(offset)));
        nodes.extend(tree.into_iter().map(|mut node| {
            if let Content::Dir(children) = &mut node.content {
                for (_, ino) in children.iter_mut() {
                    *ino = Ino::from_index(ino.index() + offset);
                }
            }
            node
        }));
    }
    nodes[0].content = Content::Dir(roots);
    nodes
}
