//! Layer views of an image index: each layer's own tree as overlayfs takes a lower directory (a whiteout as a
//! character device 0/0, an opaque directory with `trusted.overlay.opaque=y`), one layer alone or all of them
//! side by side (`<n>-sha256-<hex>` under the root), so `mount -t overlay -o lowerdir=…` over them gives the
//! image's merged tree. Views are built from the layers' parts: taken from the part store, or indexed from the
//! image's source (and kept) when missing. The view is written as an index of its own (same span table, so it
//! shares the merged tree's cache) to a temporary file that every command can open like any index.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use clip_format::ArchiveKind;
use clip_indexer::{assemble, layer_parts, IndexOptions, PartStore, TreeKind};
use clip_source::{Descriptor, Digest};
use tempfile::NamedTempFile;

use crate::open::{load_archive, open_image_source, Location, OpenOptions};
use crate::ImageError;

/// Which layer a user named: its position (0 = bottom) or its digest (`sha256:…`, or a unique prefix of the
/// hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerChoice {
    Position(usize),
    Digest(String),
}

impl std::str::FromStr for LayerChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse() {
            Ok(n) => LayerChoice::Position(n),
            Err(_) => LayerChoice::Digest(s.strip_prefix("sha256:").unwrap_or(s).to_owned()),
        })
    }
}

/// Which view: one layer's, or all layers side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChoice {
    Layer(LayerChoice),
    AllLayers,
}

/// A view's index in a temporary file, removed when this is dropped (an archive opened from it keeps its
/// mapping).
pub struct ViewIndex(NamedTempFile);

impl ViewIndex {
    /// Where the view's index is.
    pub fn location(&self) -> Location {
        Location::Local(self.0.path().to_path_buf())
    }

    /// Keeps a copy of the view's index at `path`, written atomically.
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        let mut from = self.0.reopen().map_err(ImageError::io(self.0.path(), "reading a view"))?;
        crate::write_atomically(path, |f| {
            std::io::copy(&mut from, f).map(drop).map_err(ImageError::io(path, "writing a view"))
        })
    }
}

/// Builds the index of `view` of the index at `location` into a temporary file (removed when dropped),
/// taking parts from `parts` and indexing the layers whose parts are missing from the image's source.
pub async fn view_index(
    location: &Location,
    view: &ViewChoice,
    parts: Arc<dyn PartStore>,
    opts: &OpenOptions,
) -> Result<ViewIndex, ImageError> {
    let loaded = load_archive(location, opts).await?;
    let archive = loaded.archive;
    let meta = archive.meta();
    if archive.kind() != ArchiveKind::IndexOnly {
        return Err(ImageError::NoLayers { location: location.to_string() });
    }
    let tree = match view {
        ViewChoice::AllLayers => TreeKind::Layers,
        ViewChoice::Layer(choice) => TreeKind::Layer(pick(location, &meta.layers, choice)?),
    };
    let descs: Vec<Descriptor> =
        meta.layers.iter().map(|l| Descriptor::new(l.media_type.clone(), l.digest, l.size)).collect();
    let no_diff_id = |layer: usize| ImageError::NoDiffId { location: location.to_string(), layer };
    let diff_ids: Vec<Digest> = meta
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| l.diff_id.ok_or_else(|| no_diff_id(i)))
        .collect::<Result<_, _>>()?;
    let source = open_image_source(location, &archive, &opts.source).await?;
    let index_opts =
        IndexOptions { span_size: meta.span_size, parts: Some(parts), reuse: true, ..IndexOptions::default() };
    let index_err = |e| ImageError::Index { image: meta.source.clone(), source: Box::new(e) };
    let parts = layer_parts(&descs, &diff_ids, source, &index_opts).await.map_err(index_err)?;
    let media_types: Vec<String> = meta.layers.iter().map(|l| l.media_type.clone()).collect();
    let base = clip_format::ImageMeta { layers: Vec::new(), ..meta.clone() };
    let contents = assemble(base, &media_types, parts, tree).map_err(index_err)?;
    let mut file =
        NamedTempFile::with_prefix("clip-view-").map_err(ImageError::io(Path::new("$TMPDIR"), "creating a view"))?;
    let path = file.path().to_path_buf();
    let mut w = std::io::BufWriter::new(file.as_file_mut());
    clip_format::write_index(&contents, &mut w).map_err(ImageError::format(&path))?;
    w.flush().map_err(ImageError::io(&path, "writing a view"))?;
    drop(w);
    Ok(ViewIndex(file))
}

/// The position of the layer `choice` names.
fn pick(location: &Location, layers: &[clip_format::LayerMeta], choice: &LayerChoice) -> Result<usize, ImageError> {
    let no_such = || ImageError::NoSuchLayer {
        location: location.to_string(),
        layer: match choice {
            LayerChoice::Position(n) => n.to_string(),
            LayerChoice::Digest(d) => d.clone(),
        },
        layers: layers.iter().enumerate().map(|(i, l)| format!("{i} {}", l.digest)).collect::<Vec<_>>().join(", "),
    };
    match choice {
        LayerChoice::Position(n) if *n < layers.len() => Ok(*n),
        LayerChoice::Position(_) => Err(no_such()),
        LayerChoice::Digest(hex) => {
            let found: Vec<usize> = (0..layers.len())
                .filter(|&i| !hex.is_empty() && layers[i].digest.hex().starts_with(hex.as_str()))
                .collect();
            match found[..] {
                [i] => Ok(i),
                _ => Err(no_such()),
            }
        }
    }
}
