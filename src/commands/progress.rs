//! Progress bars on a terminal (quiet when stderr is not one): one bar per layer while indexing, one for
//! archiving and uploading.

use std::io::IsTerminal;
use std::sync::Mutex;

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
    fn layer_started(&self, layer: usize, desc: &Descriptor) {
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

    fn layer_progress(&self, layer: usize, compressed: u64, files: u64) {
        self.with_bar(layer, |b| {
            b.set_position(compressed);
            b.set_message(format!("{files} files"));
        });
    }

    fn layer_done(&self, layer: usize) {
        self.with_bar(layer, |b| {
            b.set_position(b.length().unwrap_or(0));
            b.finish();
        });
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
