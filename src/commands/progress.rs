//! Progress bars on a terminal (quiet when stderr is not one): one bar per layer while indexing (a reused
//! layer's bar says so), one for archiving and uploading; [`LayerOutcomes`] records which layers were read and
//! which reused, for the summary line.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use clip_format::LayerIndex;
use clip_indexer::Progress;
use clip_source::Descriptor;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Whether progress should be drawn.
pub fn enabled(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A bar per layer: compressed bytes read and files seen.
#[derive(Default)]
pub struct LayerBars {
    multi: MultiProgress,
    bars: Mutex<Vec<Option<ProgressBar>>>,
}

impl LayerBars {
    fn with_bar(&self, layer: usize, f: impl FnOnce(&ProgressBar)) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(bar)) = bars.get(layer) {
            f(bar);
        }
    }
}

impl Progress for LayerBars {
    fn layer_started(&self, layer: LayerIndex, desc: &Descriptor) {
        let layer = layer.index();
        let bar = self.multi.add(ProgressBar::new(desc.size));
        bar.set_style(
            ProgressStyle::with_template("layer {prefix:>2} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(layer.to_string());
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if bars.len() <= layer {
            bars.resize(layer + 1, None);
        }
        bars[layer] = Some(bar);
    }

    fn layer_progress(&self, layer: LayerIndex, compressed: u64, files: u64) {
        self.with_bar(layer.index(), |b| {
            b.set_position(compressed);
            b.set_message(format!("{files} files"));
        });
    }

    fn layer_done(&self, layer: LayerIndex) {
        self.with_bar(layer.index(), |b| {
            b.set_position(b.length().unwrap_or(0));
            b.finish();
        });
    }

    fn layer_reused(&self, layer: LayerIndex, desc: &Descriptor) {
        self.layer_started(layer, desc);
        self.with_bar(layer.index(), |b| b.finish_with_message("reused: part kept, not downloaded"));
    }
}

/// Which layers of an index were read and which took their part from the part store, passing every event on
/// to the bars when there are any.
#[derive(Default)]
pub struct LayerOutcomes {
    bars: Option<Arc<LayerBars>>,
    reused: Mutex<Vec<usize>>,
}

impl LayerOutcomes {
    pub fn new(bars: Option<Arc<LayerBars>>) -> LayerOutcomes {
        LayerOutcomes { bars, reused: Mutex::default() }
    }

    /// `2 of 3 layers reused (0, 1), 1 read (2)` for an image of `layers` layers.
    pub fn summary(&self, layers: usize) -> String {
        let reused = self.reused.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let read: Vec<usize> = (0..layers).filter(|l| !reused.contains(l)).collect();
        let list = |ls: &[usize]| ls.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let mut text = format!("{} of {layers} layers reused", reused.len());
        if !reused.is_empty() {
            text += &format!(" ({})", list(&reused));
        }
        text += &format!(", {} read", read.len());
        if !read.is_empty() && !reused.is_empty() {
            text += &format!(" ({})", list(&read));
        }
        text
    }
}

impl Progress for LayerOutcomes {
    fn layer_started(&self, layer: LayerIndex, desc: &Descriptor) {
        self.bars.iter().for_each(|b| b.layer_started(layer, desc));
    }

    fn layer_progress(&self, layer: LayerIndex, compressed: u64, files: u64) {
        self.bars.iter().for_each(|b| b.layer_progress(layer, compressed, files));
    }

    fn layer_done(&self, layer: LayerIndex) {
        self.bars.iter().for_each(|b| b.layer_done(layer));
    }

    fn layer_reused(&self, layer: LayerIndex, desc: &Descriptor) {
        let mut reused = self.reused.lock().unwrap_or_else(|e| e.into_inner());
        reused.push(layer.index());
        reused.sort_unstable();
        drop(reused);
        self.bars.iter().for_each(|b| b.layer_reused(layer, desc));
    }
}

/// One bar for `archive` and `push`: bytes packed, then bytes written or uploaded.
pub struct TransferBar {
    bar: ProgressBar,
}

impl TransferBar {
    pub fn new() -> TransferBar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} ({binary_bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message("packing");
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        TransferBar { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl clip_image::ArchiveProgress for TransferBar {
    fn packing(&self, files: u64, bytes: u64) {
        self.bar.set_message(format!("packing {files} files:"));
        self.bar.set_position(bytes);
    }

    fn writing(&self, total: u64) {
        self.bar.set_message("writing");
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes:>10}/{total_bytes:<10} ({binary_bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }

    fn uploaded(&self, sent: u64) {
        self.bar.set_message("uploading");
        self.bar.set_position(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_reused_and_read_layers() {
        let desc = |n: u8| {
            Descriptor::new(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                format!("sha256:{}", format!("{n:x}").repeat(64)).parse().unwrap(),
                1,
            )
        };
        let outcomes = LayerOutcomes::new(None);
        assert_eq!(outcomes.summary(2), "0 of 2 layers reused, 2 read");
        outcomes.layer_reused(LayerIndex(2), &desc(2));
        outcomes.layer_reused(LayerIndex(0), &desc(0));
        assert_eq!(outcomes.summary(4), "2 of 4 layers reused (0, 2), 2 read (1, 3)");
        outcomes.layer_reused(LayerIndex(1), &desc(1));
        assert_eq!(outcomes.summary(3), "3 of 3 layers reused (0, 1, 2), 0 read");
    }
}
